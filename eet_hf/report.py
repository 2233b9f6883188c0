"""What accelerate() did to a model: the modules it rewired and the parts left to HF, with reasons."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class Report:
    model_type: str
    kernels: str  # "cuda" when the CUDA extension serves the ops, else "reference"
    accelerated: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)
    # Installed parts that only a CUDA device runs (CUDA graphs): label -> what runs in their place elsewhere.
    # explain() lists them under `accelerated` only for a model on CUDA.
    cuda_only: dict[str, str] = field(default_factory=dict)
    device: str | None = None  # device type of the model explain() described (None: not described yet)

    def add_cuda_only(self, label: str, elsewhere: str) -> None:
        """An accelerated part that runs only on CUDA; `elsewhere` says what runs instead on other devices."""
        self.accelerated.append(label)
        self.cuda_only[label] = elsewhere

    def on_device(self, device: str) -> Report:
        """A copy as it holds for a model on `device`: off CUDA the CUDA-only parts leave `accelerated`."""
        idle = () if device == "cuda" else self.cuda_only
        return dataclasses.replace(self, accelerated=[p for p in self.accelerated if p not in idle],
                                   fallbacks=dict(self.fallbacks), cuda_only=dict(self.cuda_only), device=device)

    def not_here(self) -> dict[str, str]:
        """The CUDA-only parts that do not run on this report's device: label -> what runs instead."""
        return {label: instead for label, instead in self.cuda_only.items() if label not in self.accelerated}

    def __str__(self) -> str:
        lines = [f"eet_hf: {self.model_type} — {len(self.accelerated)} modules accelerated ({self.kernels} ops)"]
        if self.device not in (None, "cuda") and self.accelerated:
            lines.append(f"  on {self.device} eet runs its PyTorch reference ops: HF's answers, no speed-up "
                         "(the CUDA kernels and graphs need a CUDA GPU)")
        idle = self.not_here()
        width = max((len(p) for p in [*self.accelerated, *self.fallbacks, *idle]), default=0)
        for path in self.accelerated:
            lines.append(f"  {path:<{width}}  eet")
        for label, instead in idle.items():
            lines.append(f"  {label:<{width}}  CUDA only (on {self.device}: {instead})")
        for path, reason in self.fallbacks.items():
            lines.append(f"  {path:<{width}}  HF  ({reason})")
        return "\n".join(lines)

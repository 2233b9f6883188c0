"""What accelerate() did to a model: the modules it rewired and the parts left to HF, with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    model_type: str
    kernels: str  # "cuda" when the CUDA extension serves the ops, else "reference"
    accelerated: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"eet_hf: {self.model_type} — {len(self.accelerated)} modules accelerated ({self.kernels} ops)"]
        width = max((len(p) for p in [*self.accelerated, *self.fallbacks]), default=0)
        for path in self.accelerated:
            lines.append(f"  {path:<{width}}  eet")
        for path, reason in self.fallbacks.items():
            lines.append(f"  {path:<{width}}  HF  ({reason})")
        return "\n".join(lines)

"""Optimizer updates as ONNX nodes, with PyTorch's semantics.

- sgd: g = grad + weight_decay * p; with momentum, buf = momentum * buf + g (state `<p>.momentum`,
  zeros at the start, which equals PyTorch's buf = g on the first step); p -= lr * buf.
- adam: g = grad + weight_decay * p (L2, as torch.optim.Adam); m = b1 m + (1-b1) g;
  v = b2 v + (1-b2) g^2; p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps), t = step (1-based).
- adamw: as adam without the L2 term, and p *= 1 - lr * weight_decay first (decoupled decay).
States `<p>.m` and `<p>.v`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompileError
from .autodiff import TrainEmitter

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class OptimConfig:
    kind: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def validate(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise CompileError(f"unknown optimizer '{self.kind}'",
                               expected=" or ".join(OPTIMIZERS), received=self.kind)
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0 and self.eps > 0
                and all(0 <= b < 1 for b in self.betas)):
            raise CompileError("optimizer settings out of range",
                               expected="0 <= momentum < 1, weight_decay >= 0, 0 <= betas < 1, "
                                        "eps > 0",
                               received=f"momentum={self.momentum}, weight_decay="
                                        f"{self.weight_decay}, betas={self.betas}, eps={self.eps}")

    def state_names(self, param: str) -> list[str]:
        if self.kind == "sgd":
            return [f"{param}.momentum"] if self.momentum else []
        return [f"{param}.m", f"{param}.v"]


def update(g: TrainEmitter, cfg: OptimConfig, param: str, grad: str, lr: str,
           step: str) -> dict[str, str]:
    """{carried name: its new value} for one parameter and its optimizer state."""
    g.begin(param, "update/")
    if cfg.weight_decay and cfg.kind != "adamw":
        grad = g.op("Add", [grad, g.op("Mul", [param, g.scalar(cfg.weight_decay)])])
    if cfg.kind == "sgd":
        return sgd(g, cfg, param, grad, lr)
    return adam(g, cfg, param, grad, lr, step)


def sgd(g: TrainEmitter, cfg: OptimConfig, param: str, grad: str, lr: str) -> dict[str, str]:
    new = {}
    if cfg.momentum:
        buf = f"{param}.momentum"
        grad = g.op("Add", [g.op("Mul", [buf, g.scalar(cfg.momentum)]), grad])
        new[buf] = grad
    new[param] = g.op("Sub", [param, g.op("Mul", [grad, lr])])
    return new


def adam(g: TrainEmitter, cfg: OptimConfig, param: str, grad: str, lr: str,
         step: str) -> dict[str, str]:
    b1, b2 = cfg.betas
    m, v = f"{param}.m", f"{param}.v"
    new_m = g.op("Add", [g.op("Mul", [m, g.scalar(b1)]), g.op("Mul", [grad, g.scalar(1 - b1)])])
    square = g.op("Mul", [grad, grad])
    new_v = g.op("Add", [g.op("Mul", [v, g.scalar(b2)]), g.op("Mul", [square, g.scalar(1 - b2)])])
    t = g.op("Cast", [step], to=g.FLOAT)
    m_hat = g.op("Div", [new_m, bias_correction(g, b1, t)])
    v_hat = g.op("Div", [new_v, bias_correction(g, b2, t)])
    delta = g.op("Div", [m_hat, g.op("Add", [g.op("Sqrt", [v_hat]), g.scalar(cfg.eps)])])
    p = param
    if cfg.kind == "adamw" and cfg.weight_decay:
        shrink = g.op("Sub", [g.scalar(1.0), g.op("Mul", [lr, g.scalar(cfg.weight_decay)])])
        p = g.op("Mul", [param, shrink])
    return {param: g.op("Sub", [p, g.op("Mul", [delta, lr])]), m: new_m, v: new_v}


def bias_correction(g: TrainEmitter, beta: float, t: str) -> str:
    return g.op("Sub", [g.scalar(1.0), g.op("Pow", [g.scalar(beta), t])])

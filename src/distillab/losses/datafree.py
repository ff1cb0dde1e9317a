"""Generator-based data-free distillation: DFAD (Fang, Song, Zhang, Wang & Song 2019, arXiv 1912.11006).

No training data: a generator turns noise into inputs, the student learns to match the frozen teacher on them,
and the generator learns to make inputs where the two disagree. The alternation lives in the method's own
training step (``dfad``, registered with the engine's steps), so the one loop runs it like any other method.
"""

from __future__ import annotations

from typing import Mapping

import torch

from distillab.core.contract import TRAINABLE
from distillab.core.steps import STEPS, StepRunner
from distillab.losses.base import LOSSES, Batch, LossTerm
from distillab.methods import register_method

DFAD_REFERENCE = "Fang et al. 2019 (arXiv 1912.11006); VainF/Data-Free-Adversarial-Distillation DFAD_cifar.py"


def logit_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the logits (DFAD's MAE), in fp32."""
    return (student_logits.float() - teacher_logits.float()).abs().mean()


@LOSSES.register("dfad", description="DFAD: student matches the teacher's logits (L1) on a generator's inputs")
class DFAD(LossTerm):
    """Data-Free Adversarial Distillation (Fang et al. 2019; code VainF/Data-Free-Adversarial-Distillation,
    ``DFAD_cifar.py``, ``network/gan.py``).

    Per iteration (one engine step, method step ``dfad``): ``student_steps`` student updates, each on a fresh
    batch x = G(z), z ~ N(0, I) (G's output detached), minimising
        L_S = mean |z_s(x) - z_t(x)|        (L1 / MAE on the logits);
    then one generator update on a fresh batch, minimising L_G = -mean |z_s(G(z)) - z_t(G(z))| (through both
    frozen teacher and student; only G moves). The paper argues MAE over KL: KL's gradient vanishes as the
    student matches the teacher.

    Reference defaults (``DFAD_cifar.py``): 5 student steps per generator step, 50 iterations per epoch, 500
    epochs, batch 256, nz 256; student SGD lr 0.1, momentum 0.9, weight decay 5e-4; generator Adam lr 1e-3
    (its own optimiser: ``models.generator.optim``); the step schedule (x0.1 at epochs 100, 200) is off by default
    there, as here. The generator trains in train mode throughout (its BatchNorm statistics move on every
    forward), the teacher in eval mode, as in the reference.

    generator: the run's model holding the generator. student_steps: student updates per generator update.
    iterations_per_epoch: engine steps (generator updates) per epoch.
    """

    data_free = True  # the engine gives this method no data: its step draws the inputs

    def __init__(self, generator: str = "generator", student_steps: int = 5, iterations_per_epoch: int = 50) -> None:
        super().__init__()
        if student_steps < 1 or iterations_per_epoch < 1:
            raise ValueError("dfad: student_steps and iterations_per_epoch must be at least 1")
        self.generator, self.student_steps, self.iterations_per_epoch = generator, student_steps, iterations_per_epoch

    def bind(self, models: Mapping[str, str]) -> None:
        super().bind(models)
        if models.get(self.generator) != TRAINABLE:
            raise ValueError(f"needs a trainable generator named {self.generator!r} (add it under `models:` with "
                             "role: trainable and arch: dfad_generator, or name yours with method.params.dfad.generator)")

    def reads(self) -> dict[str, tuple[str, ...]]:
        return {**super().reads(), self.generator: ()}

    def forward(self, batch: Batch) -> torch.Tensor:
        return logit_l1(batch.student.logits, batch.teacher.logits)


@STEPS.register("dfad", description="DFAD: student steps on generated inputs, then one adversarial generator step")
def dfad_step(run: StepRunner):
    term = next(t for t in run.objective.terms.values() if isinstance(t, DFAD))
    gen = run.models[term.generator].module
    student = run.models[term.roles["student"]].module
    teacher = run.models[term.roles["teacher"]].module
    device = next(gen.parameters()).device

    def noise() -> torch.Tensor:
        return torch.randn(run.batch_size, gen.nz, generator=run.rng, device=device)

    for _ in range(term.student_steps):
        with run.autocast():
            with torch.no_grad():
                x = gen(noise())
                t_logits = teacher(x)
            s_logits = student(x)
            loss_s = logit_l1(s_logits, t_logits)
        run.update(loss_s, models=[term.roles["student"]])
    with run.autocast():
        x = gen(noise())
        loss_g = -logit_l1(student(x), teacher(x))
    run.update(loss_g, models=[term.generator])
    run.labels = t_logits.argmax(1)  # train/top1: agreement with the teacher on the generated inputs
    return loss_s, {"dfad": loss_s.detach(), "dfad.generator": loss_g.detach()}, {"student": s_logits.detach()}


register_method(
    "dfad",
    "data-free adversarial distillation: L1 on logits over a generator's inputs, 5 student : 1 generator steps",
    {"dfad": ("dfad", 1.0)},
    reference=DFAD_REFERENCE,
    step="dfad",
    paradigm="data_free",
)

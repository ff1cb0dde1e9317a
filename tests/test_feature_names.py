"""Every feature-reading term takes names; the older integer spelling reads as the same names and gives
bit-identical values; bad options are refused with the term's name; ``feature_stage`` finds stages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillab.config import ConfigError, MethodConfig
from distillab.features import feature_name, feature_names, feature_stage
from distillab.losses.feature import OFD, VID, AttentionTransfer, FitNetHint, NeuronSelectivityTransfer
from distillab.losses.feature_staged import FSP, ActivationBoundary, FactorTransfer
from distillab.losses.relation import CC, PKT, RKD, SP
from distillab.losses.review import ReviewKD
from distillab.objective import build_objective

from test_losses_feature import model, pair, real_batch, setup_on

# (term name, the integer spelling, the name spelling); every pair is built on the MNIST-1D cnn1d pair
SPELLINGS = [
    ("fitnet", lambda: FitNetHint(hint_layer=1), lambda: FitNetHint(feature="stage1")),
    ("fitnet-int-feature", lambda: FitNetHint(feature=1, teacher_feature=1),
     lambda: FitNetHint(feature="stage1", teacher_feature="stage1")),
    ("at", lambda: AttentionTransfer(stages=(0, 1, 2)),
     lambda: AttentionTransfer(stages=("stage0", "stage1", "stage2"))),
    ("nst", lambda: NeuronSelectivityTransfer(stages=[0, 2]),
     lambda: NeuronSelectivityTransfer(stages=["stage0", "stage2"])),
    ("vid", lambda: VID(stages=(1, 2)), lambda: VID(stages=("stage1", "stage2"))),
    ("ofd", lambda: OFD(stages=(0, 1, 2)), lambda: OFD(stages=("preact0", "preact1", "preact2"))),
    ("reviewkd", lambda: ReviewKD(stages=(0, 1, 2)), lambda: ReviewKD(stages=("stage0", "stage1", "stage2"))),
    ("reviewkd-teacher", lambda: ReviewKD(stages=(0, 1)),
     lambda: ReviewKD(stages=("stage0", "stage1"), teacher_stages=(0, "preact1"))),
    ("reviewkd-preact", lambda: ReviewKD(stages=(0, 1, 2), student_preact=True),
     lambda: ReviewKD(stages=("preact0", "preact1", "preact2"))),
    ("reviewkd-preact-stage-names", lambda: ReviewKD(stages=(0, 1, 2), student_preact=True),
     lambda: ReviewKD(stages=("stage0", "stage1", "stage2"), student_preact=True)),
    ("ab", lambda: ActivationBoundary(stages=(0, 1, 2)),
     lambda: ActivationBoundary(stages=("preact0", "preact1", "preact2"))),
    ("ft", lambda: FactorTransfer(student_feature=-1, teacher_feature=-1), lambda: FactorTransfer()),
    ("rkd", lambda: RKD(feature=2), lambda: RKD(feature="stage2")),
    ("sp", lambda: SP(feature=-1), lambda: SP()),
    ("pkt", lambda: PKT(feature=1), lambda: PKT(feature="stage1")),
    ("cc", lambda: CC(feature=0), lambda: CC(feature="stage0")),
]


def _built(make, teacher: nn.Module, student: nn.Module):
    torch.manual_seed(0)  # connectors and heads are initialised from the same draws for both spellings
    term = make()
    setup_on(term, teacher, student)
    return term.train()


@pytest.mark.parametrize("case", SPELLINGS, ids=[c[0] for c in SPELLINGS])
def test_integer_and_name_spellings_give_identical_values(case):
    _, by_index, by_name = case
    teacher, student = pair("mnist1d")
    a, b = _built(by_index, teacher, student), _built(by_name, teacher, student)
    assert (a.student_features, a.teacher_features) == (b.student_features, b.teacher_features)
    batch = real_batch(a, teacher, student)
    out_a, out_b = a(batch), b(batch)
    if isinstance(out_a, dict):
        assert list(out_a) == list(out_b)
        assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    else:
        assert torch.equal(out_a, out_b)


def test_ofd_reads_a_stage_by_module_path():
    """A pre-activation address of a stage is the same feature as preact<i>: the same margins and value."""
    teacher, student = pair("mnist1d")
    address = teacher.feature_info[1].preact
    a, b = _built(lambda: OFD(stages=(1,)), teacher, student), _built(lambda: OFD(stages=(address,)), teacher, student)
    assert torch.equal(a.margin0, b.margin0)
    batch_a, batch_b = real_batch(a, teacher, student), real_batch(b, teacher, student)
    assert torch.equal(a(batch_a)["preact1"], b(batch_b)[address])


def test_fsp_integer_and_name_spellings_give_identical_values():
    net = model("cnn1d", width=32)  # FSP compares equal channel counts: the teacher against itself
    a, b = FSP(stages=(0, 1, 2)), FSP(stages=("stage0", "stage1", "stage2"), teacher_stages=[0, 1, "stage2"])
    setup_on(a, net, net)
    setup_on(b, net, net)
    assert a.student_features == b.student_features == b.teacher_features == ("stage0", "stage1", "stage2")
    batch = real_batch(a, net, net)
    out_a, out_b = a(batch), b(batch)
    assert list(out_a) == list(out_b) == ["pair0", "pair1"]
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)


def test_logged_parts_are_named_after_the_features():
    teacher, student = pair("mnist1d")
    for make, parts in ((lambda: ReviewKD(stages=(0, 1), student_preact=True), ["preact0", "preact1", "embedding"]),
                        (lambda: ReviewKD(stages=(0, 1)), ["stage0", "stage1", "embedding"]),
                        (lambda: AttentionTransfer(stages=(0, 1)), ["stage0", "stage1"]),
                        (lambda: OFD(stages=(0, 1)), ["preact0", "preact1"])):
        term = _built(make, teacher, student)
        assert list(term(real_batch(term, teacher, student))) == parts


def test_defaults_are_the_reference_names():
    assert FitNetHint().student_features == FitNetHint().teacher_features == ("stage2",)
    for term in (AttentionTransfer(), NeuronSelectivityTransfer(), VID()):
        assert term.student_features == term.teacher_features == ("stage1", "stage2", "stage3")
    assert OFD().student_features == ("preact1", "preact2", "preact3")
    review = ReviewKD()
    assert review.student_features == ("stage1", "stage2", "stage3", "embedding")
    assert review.teacher_features == ("preact1", "preact2", "preact3", "embedding")


# the list options of every term, and how each reads an integer
LIST_OPTIONS = {
    "at": lambda v: AttentionTransfer(stages=v),
    "nst": lambda v: NeuronSelectivityTransfer(stages=v),
    "vid": lambda v: VID(stages=v),
    "ofd": lambda v: OFD(stages=v),
    "reviewkd": lambda v: ReviewKD(stages=v),
    "fsp": lambda v: FSP(stages=v),
    "ab": lambda v: ActivationBoundary(stages=v),
}
SINGLE_OPTIONS = {
    "fitnet": lambda v: FitNetHint(feature=v),
    "rkd": lambda v: RKD(feature=v),
    "sp": lambda v: SP(feature=v),
    "pkt": lambda v: PKT(feature=v),
    "cc": lambda v: CC(feature=v),
    "ft": lambda v: FactorTransfer(student_feature=v),
}


@pytest.mark.parametrize("term", list(LIST_OPTIONS))
@pytest.mark.parametrize("bad", [[True, 2], [1, 1], [1, "stage1"], [], [1.0, 2.0], [1, None], "stage1", 3],
                         ids=["bool", "repeat", "repeat-across-spellings", "empty", "float", "none", "string", "int"])
def test_bad_list_options_are_refused_naming_the_term(term, bad):
    if term in ("ab", "ofd") and bad == [1, "stage1"]:
        bad = [1, "preact1"]  # these two read integers as preact<i>
    with pytest.raises(ValueError, match=rf"^{term}: stages"):
        LIST_OPTIONS[term](bad)


@pytest.mark.parametrize("term", list(SINGLE_OPTIONS))
@pytest.mark.parametrize("bad", [True, 1.5, "", ["stage1"]])
def test_bad_single_options_are_refused_naming_the_term(term, bad):
    with pytest.raises(ValueError, match=rf"^{term}: \w*feature"):
        SINGLE_OPTIONS[term](bad)


def test_teacher_lists_are_checked_too():
    with pytest.raises(ValueError, match="^fsp: teacher_stages"):
        FSP(stages=(0, 1), teacher_stages=(0, 0))
    with pytest.raises(ValueError, match="^ab: teacher_stages"):
        ActivationBoundary(teacher_stages=[False])
    with pytest.raises(ValueError, match="^reviewkd: teacher_stages"):
        ReviewKD(teacher_stages=[])
    with pytest.raises(ValueError, match="^fitnet: teacher_feature"):
        FitNetHint(teacher_feature=2.0)


def test_fitnet_hint_layer_is_the_older_spelling():
    assert FitNetHint(hint_layer=-1).student_features == ("stage-1",)
    assert FitNetHint(hint_layer=1, teacher_feature="stage2").teacher_features == ("stage2",)
    with pytest.raises(ValueError, match="fitnet: give feature .* or its older spelling hint_layer"):
        FitNetHint(feature="stage1", hint_layer=1)
    with pytest.raises(ValueError, match="fitnet: hint_layer"):
        FitNetHint(hint_layer="stage1")


@pytest.mark.parametrize("method", ["fitnet", "fitnet2"])
def test_old_fitnet_configs_keep_working(method):
    old = build_objective(MethodConfig(name=method, params={"hint": {"hint_layer": 1}})).terms["hint"]
    new = build_objective(MethodConfig(name=method, params={"hint": {"feature": "stage1"}})).terms["hint"]
    assert old.student_features == new.student_features == ("stage1",)
    assert build_objective(MethodConfig(name=method)).terms["hint"].student_features == ("stage2",)
    with pytest.raises(ConfigError, match="method.params.hint: fitnet: give feature"):
        build_objective(MethodConfig(name=method, params={"hint": {"hint_layer": 1, "feature": "stage1"}}))


def test_reviewkd_teacher_stages():
    term = ReviewKD(stages=("layer1", "layer2"), teacher_stages=(1, "preact2"))
    assert term.student_features == ("layer1", "layer2", "embedding")
    assert term.teacher_features == ("preact1", "preact2", "embedding")
    with pytest.raises(ValueError, match="reviewkd: stages entry 'layer1' .*set teacher_stages"):
        ReviewKD(stages=("layer1",))
    with pytest.raises(ValueError, match="reviewkd: stages entry 'layer1' .*student_preact"):
        ReviewKD(stages=("layer1",), teacher_stages=(1,), student_preact=True)
    with pytest.raises(ValueError, match="reviewkd: needs as many teacher_stages as stages"):
        ReviewKD(stages=(1, 2), teacher_stages=(1,))
    with pytest.raises(ValueError, match="reviewkd: stages names \\['preact1'\\] more than once"):
        ReviewKD(stages=("stage1", "preact1"), student_preact=True)
    with pytest.raises(ValueError, match="reviewkd: the embedding level is always added"):
        ReviewKD(stages=("stage1", "embedding"), teacher_stages=("preact1", "embedding"))


# ------------------------------------------------------------------------------------ the helpers


def test_feature_names_converts_integers():
    assert feature_names("at", [0, "stage2", -1, "layer3"]) == ("stage0", "stage2", "stage-1", "layer3")
    assert feature_names("ofd", (1, 2), kind="preact") == ("preact1", "preact2")
    assert feature_name("rkd", 3) == "stage3" and feature_name("rkd", "fc:input") == "fc:input"


def test_feature_stage_resolves_names():
    net = model("resnet8x4")
    info = net.feature_info
    assert feature_stage(net, "stage1") is info[1]
    assert feature_stage(net, "preact-1") is info[-1]
    assert feature_stage(net, info[2].name) is info[2]
    assert feature_stage(net, info[3].preact) is info[3]


@pytest.mark.parametrize("name,message", [
    ("embedding", "'embedding' is not a feature stage of"),
    ("fc:input", "'fc:input' is not a feature stage of"),
    ("stage9", "'stage9': .* has 4 feature stages"),
    ("preact-5", "'preact-5': .* has 4 feature stages"),
])
def test_feature_stage_refuses_other_names(name, message):
    with pytest.raises(ValueError, match=message):
        feature_stage(model("resnet8x4"), name)


def test_feature_stage_needs_feature_info():
    with pytest.raises(ValueError, match="has no feature_info"):
        feature_stage(nn.Linear(2, 2), "stage0")

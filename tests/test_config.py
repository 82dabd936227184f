import pytest

from tests.conftest import PROJECT_ROOT
from transferline.config import GateParams, IngestParams, PrepareParams, PreprocessParams, load_section, parse_section
from transferline.errors import ParamsError


def test_defaults_in_params_yaml_are_valid():
    from tests.conftest import PROJECT_ROOT

    params_file = PROJECT_ROOT / "params.yaml"
    assert load_section("ingest", IngestParams, params_file).source == "fashion_mnist"
    assert load_section("preprocess", PreprocessParams, params_file).image_size > 0
    assert 0 < load_section("prepare", PrepareParams, params_file).val_fraction < 1


@pytest.mark.parametrize(
    ("section", "model", "raw", "expected"),
    [
        ("prepare", PrepareParams, {"val_fraction": 1.5}, "prepare.val_fraction"),
        ("prepare", PrepareParams, {"min_per_class": "many"}, "prepare.min_per_class"),
        ("prepare", PrepareParams, {"val_fraction": 0.5, "test_fraction": 0.45}, "leave at least 10%"),
        ("prepare", PrepareParams, {"val_fractoin": 0.1}, "prepare.val_fractoin: Extra inputs"),
        ("ingest", IngestParams, {"source": "imagenet"}, "ingest.source"),
        ("ingest", IngestParams, {"per_class": 0}, "ingest.per_class"),
        ("preprocess", PreprocessParams, {"image_size": 8}, "preprocess.image_size"),
        ("preprocess", PreprocessParams, {"std": [0.2, 0.0, 0.2]}, "std values must all be > 0"),
    ],
)
def test_bad_values_name_the_param(section, model, raw, expected):
    with pytest.raises(ParamsError, match=expected.replace(".", r"\.")):
        parse_section({section: raw}, section, model)


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_section("prepare", PrepareParams, tmp_path / "params.yaml")


def test_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare: 3\n")
    with pytest.raises(ParamsError, match="section 'prepare' must be a mapping"):
        load_section("prepare", PrepareParams, path)


def test_every_section_of_params_yaml_is_valid():
    from tests.conftest import PROJECT_ROOT
    from transferline.config import SECTION_MODELS, parse_all_sections, read_params_file

    data = read_params_file(PROJECT_ROOT / "params.yaml")
    parsed = parse_all_sections(data)
    assert set(parsed) == set(SECTION_MODELS) == set(data)
    assert parsed["train"].epochs == data["train"]["epochs"]


@pytest.mark.parametrize(
    ("section", "raw", "expected"),
    [
        ("train", {"epochs": 1, "warmup_epochs": 1}, "train.warmup_epochs: Value error, must be below epochs (1)"),
        ("serve", {"port": 0}, "serve.port"),
        ("gate", {"champion_metric": "loss"}, "gate.champion_metric"),
    ],
)
def test_all_sections_check_each_section_with_its_own_model(section, raw, expected):
    from transferline.config import parse_all_sections

    with pytest.raises(ParamsError, match=expected.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        parse_all_sections({section: raw})


def test_the_removed_champion_tolerance_names_its_replacement():
    with pytest.raises(ParamsError) as caught:
        parse_section({"gate": {"champion_tolerance": 0.005, "min_accuracy": 0.8}}, "gate", GateParams)
    message = str(caught.value)
    assert message.startswith("invalid params: gate.champion_tolerance was removed: replaced by gate.regression_alpha")
    assert "McNemar" in message and "delete the key" in message


def test_the_gate_compares_champions_on_accuracy_only():
    with pytest.raises(ParamsError, match=r"gate\.champion_metric: .*only accuracy can be compared with the champion"):
        parse_section({"gate": {"champion_metric": "macro_f1"}}, "gate", GateParams)
    gate = load_section("gate", GateParams, PROJECT_ROOT / "params.yaml")
    assert gate.champion_metric == "accuracy" and gate.regression_alpha == 0.05 and gate.allow_class_change is False


@pytest.mark.parametrize("alpha", [0, 1, 1.5])
def test_regression_alpha_is_a_probability_strictly_between_0_and_1(alpha):
    with pytest.raises(ParamsError, match=r"gate\.regression_alpha"):
        parse_section({"gate": {"regression_alpha": alpha}}, "gate", GateParams)

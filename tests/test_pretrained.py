"""A baseline you already have: the ``baseline:`` section with your own checkpoints and
RobustBench's networks (their own architecture definitions; checkpoints written here in
RobustBench's layout, so nothing is downloaded)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_SEARCH

from semirobust_ray import zoo
from semirobust_ray.baseline import get_baseline
from semirobust_ray.config import ConfigError, ExperimentConfig, load_config
from semirobust_ray.experiment import prepare
from semirobust_ray.models import ModelError, create_model, trainable_layers
from semirobust_ray.pretrained import BaselineSourceError, load_networks, resolve_sources
from semirobust_ray.runner import run_algorithm1
from semirobust_ray.training import evaluate

CIFAR = str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_subset.npz")
WONG = zoo.parse_ref("robustbench:Wong2020Fast")  # PreActResNet-18, the zoo's smallest


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- your own checkpoints, on the digits data -----------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A baseline trained by the tool, and its two networks saved as a user would save them:
    the regular one as the bare network's state dict, the robust one wrapped the way many
    training scripts write it ({"state_dict": ...} with DataParallel's ``module.`` prefix)."""
    root = tmp_path_factory.mktemp("given")
    config = ExperimentConfig.from_dict(
        {**DIGITS_SEARCH, "split_depths": [1, 3], "mi": False, "cache_dir": str(root / "cache")}
    )
    baseline = get_baseline(prepare(config))
    bare = {k.removeprefix("net."): v for k, v in baseline.regular_state.items()}
    torch.save({k: v for k, v in bare.items() if not k.startswith("normalize.")}, root / "reg.pt")
    wrapped = {f"module.{k}": v for k, v in baseline.robust_state.items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, root / "rob.pt")
    return root, config, baseline


def _given(root, config, **section):
    section = {"robust": str(root / "rob.pt"), "regular": str(root / "reg.pt"), **section}
    return config.replace(baseline=section, cache_dir=str(root / "given-cache"))


def test_given_networks_reproduce_the_trained_baseline(logs, trained):
    """The same two networks, given instead of trained, measure to the same numbers and give
    the same trials: only stage 1's training is skipped."""
    root, config, baseline = trained
    given_config = _given(root, config)
    logs.clear()
    given = get_baseline(prepare(given_config))
    assert given.acc_star == baseline.acc_star
    assert given.metrics.acc_star_val == baseline.metrics.acc_star_val
    assert given.metrics.clean_acc_regular == baseline.metrics.clean_acc_regular
    assert given.metrics.adv_train_seconds is None  # nothing was trained
    for k, v in baseline.robust_state.items():
        assert torch.equal(v, given.robust_state[k]), k
    assert not any("epoch" in line for line in logs)
    source = given.metrics.source
    assert source["robust"]["sha256"] == _sha(root / "rob.pt")
    assert source["regular"]["sha256"] == _sha(root / "reg.pt")

    ours = run_algorithm1(config)
    theirs = run_algorithm1(given_config)
    numbers = ("fb_layers", "acc", "acc_sr", "epochs_run", "reached")
    for a, b in zip(ours["trials"], theirs["trials"], strict=True):
        assert {k: a[k] for k in numbers} == {k: b[k] for k in numbers}
    assert theirs["baseline"]["source"] == source


def test_the_measurements_are_reused_for_the_same_files_only(logs, trained):
    root, config, _ = trained
    exp = prepare(_given(root, config))
    get_baseline(exp)
    logs.clear()
    again = get_baseline(exp)
    assert any("reusing the measurements" in line for line in logs)
    # Another robust network in the same file: the cache must not answer for it.
    state = torch.load(root / "rob.pt", weights_only=True)
    state["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v
                           for k, v in state["state_dict"].items()}  # fmt: skip
    torch.save(state, root / "rob2.pt")
    other = prepare(_given(root, config, robust=str(root / "rob2.pt")))
    logs.clear()
    changed = get_baseline(other)
    assert not any("reusing" in line for line in logs)
    assert changed.metrics.source["robust"]["sha256"] != again.metrics.source["robust"]["sha256"]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_are_one_line_errors_before_any_compute(trained, tmp_path):
    root, config, _ = trained
    torch.save(create_model("smallvgg", 10, 8, 1).state_dict(), tmp_path / "vgg.pt")
    torch.save(create_model("smallcnn", 10, 8, 1), tmp_path / "pickled.pt")  # a whole module
    (tmp_path / "damaged.pt").write_bytes((root / "reg.pt").read_bytes()[:3000])
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    cases = {
        "vgg.pt": "is not the architecture of the model: ",
        "missing.pt": "checkpoint not found (",
        "pickled.pt": "cannot be loaded safely: it holds pickled objects beyond tensors",
        "damaged.pt": "cannot be loaded safely: damaged or not a torch file",
        "list.pt": "is not a state dict (name -> tensor)",
    }
    for name, expected in cases.items():
        with pytest.raises(BaselineSourceError) as err:
            prepare(_given(root, config, regular=str(tmp_path / name)))
        message = _one_line(err)
        assert message.startswith(f"baseline.regular '{tmp_path / name}'"), message
        assert expected in message, message


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"robust": "r.pt"}, "baseline: regular: needs the regular network"),
        ({"robust": "r.pt", "regulr": "x.pt"}, "unknown key 'regulr' (did you mean 'regular'?)"),
        ({"robust": "robustbench:a/b"}, "is not a RobustBench reference"),
        ({"robust": "r.pt", "regular": "x.pt", "download": "yes"}, "download: expected true"),
        ("robustbench:Wong2020Fast", "baseline: expected a mapping with robust: and regular:"),
    ],
)
def test_a_bad_baseline_section_is_a_config_error(section, expected):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"baseline": section})
    assert expected in _one_line(err)


def test_set_reaches_one_entry_of_the_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("baseline:\n  robust: robustbench:Wong2020Fast\n  download: false\n")
    config = load_config(path, ["baseline.regular=mine.pt"])
    assert config.baseline["robust"] == "robustbench:Wong2020Fast"
    assert config.baseline["regular"] == "mine.pt" and config.baseline["download"] is False
    # Defaults filled in: a RobustBench robust network's regular one is its table's Standard.
    default = ExperimentConfig.from_dict({"baseline": {"robust": "robustbench:Wong2020Fast"}})
    assert default.baseline["regular"] == "robustbench:cifar10/Linf/Standard"


# --- RobustBench ---------------------------------------------------------------------------


def test_robustbench_lists_its_zoo_behind_the_shims():
    entries = zoo._entries(WONG)
    assert len(entries) >= 70 and "Standard" in entries and "Carmon2019Unlabeled" in entries


def test_robustbench_architectures_are_models():
    model = create_model(WONG.spec, 10, 32, 3)
    assert len(trainable_layers(model)) == 21  # PreActResNet-18: 17 + 3 shortcut convs + fc
    assert model.normalize.mean.flatten().tolist() == [0.0] * 3  # it normalises itself
    with pytest.raises(ModelError, match="classifies 10 classes, the dataset has 100"):
        create_model(WONG.spec, 100, 32, 3)
    with pytest.raises(ModelError, match=r"no cifar10 Linf model 'Wong2020Fas' \(did you mean"):
        create_model("robustbench:Wong2020Fas", 10, 32, 3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """RobustBench's layout with Wong2020Fast's architecture under two names' files: a
    "robust" and a "regular" checkpoint (random weights; RobustBench does not know)."""
    root = tmp_path_factory.mktemp("robustbench")
    torch.manual_seed(0)
    path = WONG.checkpoint(root)
    path.parent.mkdir(parents=True)
    torch.save(zoo.architecture(WONG).state_dict(), path)
    torch.manual_seed(1)
    torch.save(zoo.architecture(WONG).state_dict(), root / "regular.pt")
    return root


def _cifar_config(root, **section) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        dict(
            model=WONG.spec,
            dataset="npz",
            data_path=CIFAR,
            max_train=128,
            max_test=64,
            eval_samples=32,
            steps=2,
            split_depths=[3],
            epochs=1,
            trials_per_depth=1,
            batch_size=64,
            mi=False,
            cache_dir=str(root / "cache"),
            baseline={
                "robust": WONG.spec,
                "regular": str(root / "regular.pt"),
                "model_dir": str(root),
                "download": False,
                **section,
            },
        )
    )


def test_algorithm1_on_a_robustbench_network(model_dir):
    """Acc* is measured by us, on our test split with our attack, on the network RobustBench's
    own loader returns; the trials then run as on any baseline."""
    config = _cifar_config(model_dir)
    results = run_algorithm1(config)
    exp = prepare(config)
    net = zoo.load_network(WONG, model_dir)
    x, y = exp.eval_split("test")
    theirs = create_model(WONG.spec, 10, 32, 3)
    theirs.net = net
    attack = exp.eval_attack(theirs, config.seed)
    assert results["baseline"]["acc_star"] == evaluate(
        theirs, x, y, attack=attack, batch_size=64, device=torch.device("cpu")
    )
    assert results["baseline"]["source"]["robust"]["sha256"] == _sha(WONG.checkpoint(model_dir))
    assert [t["fb_layers"] for t in results["trials"]] == [3]
    assert "the last 3 layers" in results["answer"]["smallest_robust_fa"]["statement"]


def test_robustbench_files_are_checked_like_checkpoints(model_dir, tmp_path):
    with pytest.raises(BaselineSourceError) as err:
        prepare(_cifar_config(model_dir, regular="robustbench:Standard"))
    assert "no checkpoint at" in _one_line(err) and "download is false" in str(err.value)
    # A damaged file where RobustBench would look: ours is the error, not RobustBench's.
    broken = tmp_path / "rb"
    target = WONG.checkpoint(broken)
    target.parent.mkdir(parents=True)
    target.write_bytes(WONG.checkpoint(model_dir).read_bytes()[:4096])
    section = {"model_dir": str(broken), "regular": str(model_dir / "regular.pt")}
    with pytest.raises(BaselineSourceError) as err:
        prepare(_cifar_config(model_dir, **section))
    assert "cannot be loaded safely: damaged" in _one_line(err)
    torch.save(zoo.architecture(WONG), target)  # the whole module, pickled
    with pytest.raises(BaselineSourceError) as err:
        prepare(_cifar_config(model_dir, **section))
    assert "it holds pickled objects beyond tensors" in _one_line(err)
    with pytest.raises(BaselineSourceError) as err:
        prepare(_cifar_config(model_dir, robust="robustbench:Wong2020Fas"))
    assert "(did you mean 'Wong2020Fast'?)" in _one_line(err)


def test_a_published_pair_fits_and_another_architecture_does_not(tmp_path):
    """Carmon2019Unlabeled and Standard: both RobustBench's WideResNet-28-10 (Carmon's
    definition keeps an unused sub_block1 for its checkpoint, dropped here). Hendrycks2019Using
    has Standard's very keys but another forward (2x - 1 first): refused."""
    for name in ("Carmon2019Unlabeled", "Standard", "Hendrycks2019Using"):
        ref = zoo.parse_ref(f"robustbench:{name}")
        ref.checkpoint(tmp_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": zoo.architecture(ref).state_dict()}, ref.checkpoint(tmp_path))
    section = {"robust": "robustbench:Carmon2019Unlabeled", "model_dir": str(tmp_path)}

    def build():
        return create_model("robustbench:Carmon2019Unlabeled", 10, 32, 3)

    sources = resolve_sources(section)
    regular, robust, record = load_networks(sources, build)
    assert record["regular"]["spec"] == "robustbench:cifar10/Linf/Standard"
    assert not any(k.startswith("net.sub_block1.") for k in robust)
    assert set(regular) == set(robust) == set(build().state_dict())
    with pytest.raises(BaselineSourceError) as err:
        resolve_sources({**section, "regular": "robustbench:Hendrycks2019Using"}, build)
    assert "is a Hendrycks2019UsingNet, the model a WideResNet" in _one_line(err)
    assert json.dumps(record)  # the record goes into baseline.json


def test_a_search_on_given_networks_says_so(trained):
    """The Ray path: the baseline task measures the given networks; the stored baseline and the
    report name them."""
    import ray

    from semirobust_ray.ray_search import run_search
    from semirobust_ray.report import answer_lines
    from semirobust_ray.searchdir import load_search_baseline

    root, config, baseline = trained
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_search(
            _given(root, config),
            storage_path=str(root / "runs"),
            name="given",
            verbose=0,
        )
    finally:
        ray.shutdown()
    stored = load_search_baseline(outcome.experiment_dir)
    assert stored.acc_star == baseline.acc_star
    assert stored.metrics.source["regular"]["sha256"] == _sha(root / "reg.pt")
    answer = json.loads(Path(outcome.report_paths["minimal_split"]).read_text())
    assert answer["baseline_source"]["robust"]["spec"] == str(root / "rob.pt")
    lines = answer_lines(answer)
    assert any(line.startswith("Acc* is that of the given robust network") for line in lines)


def test_the_shims_leave_nothing_behind():
    """The stand-ins exist only while RobustBench is imported (pytest's own monkeypatch, for
    one, breaks on a pkg_resources without its functions)."""
    import subprocess
    import sys

    code = (
        "import sys; from semirobust_ray import zoo; zoo.import_robustbench(); "
        "import robustbench.loaders as l; "
        "print('pkg_resources' in sys.modules, 'autoattack' in sys.modules, "
        "l.pkg_resources.resource_filename('robustbench', 'x').endswith('x'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import importlib.util

    native = importlib.util.find_spec("pkg_resources") is not None
    assert out.stdout.split() == [str(native), "False", "True"]

"""The shared vocabulary: each name defined once and every side reading it from there."""

import hashlib
import re
from pathlib import Path

import pytest
import torch

from gradlab import expectations, vocabulary
from gradlab.cells import CELLS, RecurrentNet
from gradlab.config import CHECKS, ModelConfig
from gradlab.vocabulary import MAX_ID_BYTES, format_run_id, run_hash

ROOT = Path(__file__).resolve().parents[1]


def test_every_metric_column_of_the_table_is_one_an_expectation_may_assert_on():
    assert list(expectations.COLUMNS) == vocabulary.METRICS  # verdicts was missing from a copied list
    check = expectations.parse_check("verdicts", "== 2 vanishing, 1 healthy")
    assert (check.op, check.expr) == ("==", "2 vanishing, 1 healthy")
    assert expectations.evaluate_check(check, {"verdicts": "2 vanishing, 1 healthy"})[0]
    assert not expectations.evaluate_check(check, {"verdicts": "3 vanishing"})[0]


def test_the_readme_lists_the_columns_an_expectation_may_assert_on():
    text = (ROOT / "README.md").read_text()
    listed = re.search(r"asserts\non aggregated columns \(`([^`]*)`", text).group(1)
    assert [c.strip() for c in listed.split(",")] == vocabulary.METRICS


def test_the_option_names_are_the_ones_validation_and_torch_know():
    for path, names in (("train.optimizer", vocabulary.OPTIMIZERS), ("dtype", vocabulary.DTYPES),
                        ("model.engine", vocabulary.ENGINES)):
        assert all(CHECKS[path](n) is None for n in names), path
        assert f"valid: {', '.join(names)}" in CHECKS[path]("nope"), path
    assert all(issubclass(getattr(torch.optim, c), torch.optim.Optimizer) for c in vocabulary.OPTIMIZERS.values())
    assert all(isinstance(getattr(torch, d), torch.dtype) for d in vocabulary.DTYPES)
    assert vocabulary.CELL_NAMES == tuple(CELLS)


@pytest.mark.parametrize("parts", [["cell=lstm", "lr=0.01"], ["note=" + "é" * 150, "lr=0.01"]])
def test_a_run_id_parses_back_to_its_hash(parts):
    digest = "0123abcd4567ef89"
    run_id = format_run_id(parts, 3, digest)
    assert run_hash(run_id) == digest and len(run_id.encode()) <= MAX_ID_BYTES
    assert run_id.endswith("_seed=3_0123abcd4567ef89")
    assert run_hash("made-by-hand") == "made-by-hand"
    assert run_hash("cell=lstm_seed=3_0123abcd") == "0123abcd"  # a name from before the hash grew


def test_a_run_hash_is_64_bits_of_the_sha1_of_its_identity():
    identity = {"train": {"lr": 0.01}}
    reference = hashlib.sha1(b'{"train": {"lr": 0.01}}').hexdigest()  # the sorted JSON, by hand
    assert vocabulary.config_hash(identity) == reference[:16] and vocabulary.HASH_CHARS * 4 == 64


def test_hashes_match_exactly_or_across_the_change_of_length():
    new, other = "0123abcd4567ef89", "0123abcd00000000"  # the same 32 bits, two runs
    match = vocabulary.hash_matcher([new])
    assert match(new) and match("0123abcd")  # the run's legacy name
    assert not match(other) and not match("0123abce")
    legacy = vocabulary.hash_matcher(["0123abcd"])  # a record from before: any run it may have been
    assert legacy("0123abcd") and legacy(new) and legacy(other) and not legacy("ffffffffffffffff")
    assert not vocabulary.hash_matcher([])(new)


def test_a_net_built_without_options_takes_the_config_defaults():
    net = RecurrentNet("skip", 2, 4, 1)
    defaults = ModelConfig()
    assert (net.skip, net.engine, len(net.layers)) == (defaults.skip, defaults.engine, defaults.layers)

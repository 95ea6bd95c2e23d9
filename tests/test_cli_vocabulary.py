"""One vocabulary for every command (docs/cli.md): the shared flags have the same names and
defaults in every parser, the old spellings still work with a deprecation note, every flag
says what it does, ``awp --version`` works and ``--help`` stays light."""

import argparse
import json
import re
import subprocess
import sys

import pytest

from awp_landscape.cli import build_parser, command_names, main
from awp_landscape.flags import DeprecatedFlag, dataclass_from_arguments


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


PARSERS = _parsers()


def _visible(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        o: a
        for a in p._actions
        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
        for o in a.option_strings
    }


def _default(action: argparse.Action) -> str:
    """The default a flag's help states, as the user reads it."""
    m = re.search(r"\(default:? ([^)]*)\)", " ".join(action.help.split()))
    assert m, f"{action.option_strings} states no default: {action.help!r}"
    return m.group(1)


# flag -> (its default in every command that has it, the commands that must have it).
SHARED = {
    "--attack-steps": ("20", ("gap", "flatness", "curvature", "connect")),
    "--attack-step-size": ("2/255", ("gap", "flatness", "curvature", "connect", "landscape")),
    "--attack-restarts": ("1", ("gap", "flatness", "curvature", "connect", "landscape", "eval")),
    "--attack-start": ("uniform", ("gap", "flatness", "curvature", "connect", "landscape")),
    "--attack-mode": ("eval", ("gap", "flatness", "curvature", "connect", "landscape")),
    "--eps": ("8/255", ("gap", "flatness", "curvature", "connect", "landscape", "train")),
    "--norm": ("linf", ("gap", "flatness", "curvature", "connect", "landscape", "train", "eval")),
    "--seed": (
        "0",
        ("train", "eval", "landscape", "gap", "flatness", "curvature", "connect", "certify"),
    ),
    "--subset-seed": (
        "0",
        ("eval", "landscape", "gap", "flatness", "curvature", "connect", "certify"),
    ),
}
# A command whose default differs says why in the flag's help (the text to find).
EXPLAINED = {
    ("landscape", "--attack-steps"): "not the PGD-20 of eval",
    ("sharpness", "--attack-steps"): "not the PGD-20 of eval",
}
# eval's radius and step follow --norm: the same numbers for linf, written as the rule.
BY_NORM = {("eval", "--eps"): "8/255 linf, 0.5 l2", ("eval", "--attack-step-size"): "eps/4"}
# Training's attack (the paper's PGD-10, K1, its mode and start per method) is the training
# objective, not an evaluation: its --attack-* flags keep training's defaults.
TRAINING = ("train", "demo", "sweep", "reproduce")


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_a_shared_flag_has_one_name_and_one_default(flag):
    default, required = SHARED[flag]
    have = {name: _visible(p)[flag] for name, p in PARSERS.items() if flag in _visible(p)}
    assert set(required) <= set(have), f"{flag} missing from {set(required) - set(have)}"
    for name, action in have.items():
        if name in TRAINING and flag.startswith("--attack-"):
            continue
        if (name, flag) in BY_NORM:
            assert _default(action) == BY_NORM[name, flag]
            continue
        if (name, flag) in EXPLAINED:
            assert _default(action) != default
            assert EXPLAINED[name, flag] in " ".join(action.help.split())
            continue
        assert _default(action) == default, (name, flag, action.help)


# Spellings that no command shows any more (each still accepted where it existed).
RETIRED = ("--n", "--n-samples", "--step-size", "--restarts", "--attack-seed",
           "--train-eval-size", "--test-eval-size")  # fmt: skip


def test_no_command_shows_an_old_spelling_and_subset_sizes_have_one_name_per_idea():
    for name, p in PARSERS.items():
        shown = _visible(p)
        assert not set(RETIRED) & set(shown), (name, set(RETIRED) & set(shown))
        if "--split" in shown and name != "train":  # a subset of the split --split names
            assert "--n-examples" in shown, name
    assert {"--n-train", "--n-test"} <= set(_visible(PARSERS["gap"]))
    assert {"--n-train", "--n-test"} <= set(_visible(PARSERS["landscape"]))
    certify = _visible(PARSERS["certify"])
    assert "--samples" in certify and "Monte-Carlo" in certify["--samples"].help
    assert "--n-test" in certify
    landscape = _visible(PARSERS["landscape"])
    assert (
        "attack" in landscape["--seed"].help and "direction" in landscape["--direction-seed"].help
    )
    assert "--bootstrap-seed" in _visible(PARSERS["correlate"])


def _old_spellings() -> list[tuple[str, str, str]]:
    return sorted(
        {
            (name, old, action.new)
            for name, p in PARSERS.items()
            for action in p._actions
            if isinstance(action, DeprecatedFlag)
            for old in action.option_strings
        }
    )


POSITIONALS = {"correlate": ["t.json"], "connect": ["a.pt", "b.pt"]}


@pytest.mark.parametrize(("command", "old", "new"), _old_spellings())
def test_an_old_spelling_still_works_and_names_the_new_flag(command, old, new, capsys):
    p = PARSERS[command]
    positional = POSITIONALS.get(command, [])
    with_old = p.parse_args([*positional, old, "3"])
    note = capsys.readouterr().err
    with_new = p.parse_args([*positional, new, "3"])
    assert vars(with_old) == vars(with_new)
    assert note.count("\n") == 1 and f"{old} is deprecated" in note and f"write {new}" in note
    said = capsys.readouterr().err
    if (command, new) == ("landscape", "--seed"):  # but what --seed seeds now
        assert said.startswith("awp landscape: note: --seed seeds the attack's"), said
    else:
        assert said == ""  # the new spelling says nothing


def test_the_old_spellings_cover_the_issue_and_build_the_same_config(capsys):
    olds = {(c, o) for c, o, _ in _old_spellings()}
    for pair in [("eval", "--n"), ("eval", "--step-size"), ("eval", "--restarts"),
                 ("certify", "--n"), ("certify", "--n-samples"), ("landscape", "--attack-seed"),
                 ("landscape", "--restarts"), ("train", "--step-size"),
                 ("train", "--test-eval-size"), ("demo", "--step-size"),
                 ("correlate", "--seed")]:  # fmt: skip
        assert pair in olds, pair
    from analysis.certify_units import CertifyConfig
    from awp.evaluate import EvalConfig
    from landscape.config import SurfaceConfig

    ns = PARSERS["eval"].parse_args(["--n", "7", "--step-size", "1/255", "--seed", "4"])
    cfg = dataclass_from_arguments(EvalConfig, ns)
    assert (cfg.n, cfg.step_size, cfg.seed, cfg.subset_seed) == (7, 1 / 255, 4, 0)
    ns = PARSERS["certify"].parse_args(["--n", "50"])
    assert dataclass_from_arguments(CertifyConfig, ns).n == 50
    ns = PARSERS["landscape"].parse_args(["--attack-seed", "5", "--direction-seed", "2"])
    surface = dataclass_from_arguments(SurfaceConfig, ns)
    assert (surface.attack_seed, surface.seed) == (5, 2)
    ns = PARSERS["landscape"].parse_args(["--seed", "6"])  # --seed seeds the attacks
    assert dataclass_from_arguments(SurfaceConfig, ns).attack_seed == 6
    capsys.readouterr()


def test_an_error_names_the_flag_as_the_user_writes_it_now():
    from analysis.certify_units import CertifyConfig
    from awp.evaluate import EvalConfig

    with pytest.raises(ValueError, match=r"\(--samples\)$"):
        dataclass_from_arguments(CertifyConfig, PARSERS["certify"].parse_args(["--samples", "0"]))
    with pytest.raises(ValueError, match=r"\(--n-examples\)"):
        dataclass_from_arguments(EvalConfig, argparse.Namespace(n_examples=-1))


def test_an_eval_config_written_before_subset_seed_reads_with_its_subset_seed():
    from awp.config import from_dict, to_dict
    from awp.evaluate import EvalConfig

    old = {k: v for k, v in to_dict(EvalConfig(seed=3)).items() if k != "subset_seed"}
    cfg = from_dict(EvalConfig, json.loads(json.dumps(old)))
    assert (cfg.seed, cfg.subset_seed) == (3, 3)  # its subset was drawn with seed 3
    assert from_dict(EvalConfig, to_dict(EvalConfig(seed=3))).subset_seed == 0


def test_every_flag_has_a_help_text_and_every_command_a_description():
    for name, p in PARSERS.items():
        assert p.description and len(p.description) > 40, name
        for action in p._actions:
            if action.help == argparse.SUPPRESS:
                continue
            text = re.sub(r"\(default[^)]*\)", "", action.help or "").strip(" ;,")
            assert len(text) > 5, (name, action.option_strings or action.dest, action.help)


def test_the_command_table_lists_every_command_with_its_own_summary():
    from awp_landscape.cli import AFTER, BEFORE
    from awp_landscape.measures import MEASURES

    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in sub._choices_actions}
    assert list(command_names()) == list(summaries)
    tables = {**{n: s for n, (_, s) in {**BEFORE, **AFTER}.items()},
              **{m.command: m.summary for m in MEASURES if m.command}}  # fmt: skip
    for name in command_names():
        assert summaries[name] == tables[name], name  # the parser's help is the table's
    light = build_parser(only=None)
    assert light.format_help() == full.format_help()
    for name in command_names():  # a command's own parser, built alone, is the full one
        alone = build_parser(only=name)
        mine = next(a for a in alone._actions if isinstance(a, argparse._SubParsersAction))
        assert mine.choices[name].format_help() == sub.choices[name].format_help(), name
        assert alone.format_help() == full.format_help(), name


def test_version(capsys):
    from importlib.metadata import version

    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0
        assert capsys.readouterr().out.strip() == f"awp {version('awp-landscape')}"
    ns = build_parser().parse_args(["-v", "report", "x"])
    assert ns.verbose  # -v still means verbose


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["landscape", "--x", "-1:1:5"], "write --x=-1:1:5"),
        (["correlate", "t.json", "--where", "-epoch"], "write --where=-epoch"),
    ],
)
def test_a_value_with_a_leading_minus_gets_a_hint(argv, hint, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "expected one argument" in err and hint in err, err
    ns = build_parser().parse_args([argv[0], *argv[1:-2], f"{argv[-2]}={argv[-1]}"])
    assert argv[-1] in str(vars(ns))  # the hinted spelling parses


HEAVY = ("torch", "matplotlib")


@pytest.mark.parametrize(
    "argv", [["--help"], ["hessian", "--help"]] + [[name, "--help"] for name in command_names()]
)
def test_help_imports_neither_torch_nor_matplotlib(argv):
    """`awp --help` and every `awp CMD --help`: the parsers come from torch-free modules."""
    code = (
        "import sys\n"
        "from awp_landscape.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: awp" in proc.stdout
    assert "LOADED []" in proc.stdout, proc.stdout[-300:]


def test_the_torch_free_copies_agree_with_what_they_describe():
    """The attack names and the commands' descriptions written where torch is not imported."""
    import awp_landscape.pipeline
    import awp_landscape.sweep
    from awp.attack_names import ATTACK_LABELS, EVAL_ATTACKS
    from awp.attacks import ATTACKS
    from awp_landscape.flags import module_doc

    assert tuple(ATTACKS) == EVAL_ATTACKS
    assert {n: a.label for n, a in ATTACKS.items()} == ATTACK_LABELS
    for module in (awp_landscape.sweep, awp_landscape.pipeline):  # as --help shows it
        plain = re.sub(r":(data|func|mod):|[`~]", "", module.__doc__)
        assert module_doc(module.__name__) == plain
    assert module_doc("awp_landscape.no_such_module") is None


@pytest.mark.parametrize(
    ("argv", "seeds", "noted"),
    [
        (["--seed", "3"], {"seed": 3, "direction_seed": None}, True),
        (["--seed=3", "--direction-seed", "5"], {"seed": 3, "direction_seed": 5}, True),
        (["--direction-seed", "5"], {"seed": None, "direction_seed": 5}, False),
        ([], {"seed": None, "direction_seed": None}, False),
    ],
)
def test_landscape_notes_that_seed_now_seeds_the_attack(argv, seeds, noted, capsys):
    """`awp landscape --seed` used to seed the directions: given, it says what it seeds now."""
    args = build_parser(only="landscape").parse_args(["landscape", "a.pt", *argv])
    assert {k: getattr(args, k, None) for k in seeds} == seeds
    err = capsys.readouterr().err
    note = (
        "awp landscape: note: --seed seeds the attack's random starts since 0.1.0; the "
        "direction's seed is --direction-seed\n"
    )
    assert err == (note if noted else ""), err
    if noted:  # the value reaches the attacks' seed, not the directions'
        from awp_landscape.flags import dataclass_from_arguments
        from landscape.config import SurfaceConfig

        cfg = dataclass_from_arguments(SurfaceConfig, args)
        assert (cfg.attack_seed, cfg.seed) == (3, seeds["direction_seed"] or 0)


def test_one_out_rule_for_the_commands_that_read_checkpoints(tmp_path):
    from awp_landscape.console import CLIError
    from awp_landscape.inputs import out_folder

    run = tmp_path / "runs" / "at"
    ckpts = [run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"]
    assert out_folder(None, ckpts) == (run / "analysis").resolve()
    assert out_folder(None, ckpts, under="landscape") == (run / "analysis" / "landscape").resolve()
    assert out_folder(None, [tmp_path / "m.pt"]) == (tmp_path / "analysis").resolve()
    with pytest.raises(CLIError, match="2 run folders; name one results folder with --out"):
        out_folder(None, [ckpts[0], tmp_path / "runs" / "awp" / "checkpoints" / "best.pt"])
    assert out_folder(tmp_path / "mine", ckpts, under="landscape") == tmp_path / "mine"
    for name in ("eval", "landscape", "connect", "gap", "flatness", "curvature", "certify"):
        out = _visible(PARSERS[name])["--out"]
        assert out.default is None and "<run>/analysis" in out.help, name


# ------------------------------------------------------------------ docs/cli.md and the parsers
def _cli_reference():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_reference_is_the_parsers_own():
    """docs/cli.md's reference is generated from the parsers (scripts/cli_reference.py); a
    parser changed without rerunning the script fails here."""
    ref = _cli_reference()
    text = ref.CLI_MD.read_text()
    assert ref.updated(text) == text, "docs/cli.md is out of date: python scripts/cli_reference.py"
    for name in command_names():  # every command, every visible flag
        section = text.split(f"### `awp {name}`", 1)[1].split("### `awp ", 1)[0]
        for flag in _visible(PARSERS[name]):
            assert f"`{flag}" in section or f"/ {flag}" in section, (name, flag)


def test_the_vocabulary_tables_of_docs_cli_md_name_flags_the_commands_have():
    """Each row of the hand-written tables (subset sizes, seeds) names flags and the commands
    that have them (``certify (`--n-test`)``: only that one); every such pair must exist."""
    text = _cli_reference().CLI_MD.read_text().split("## Reference", 1)[0]
    checked = 0
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[-1] in ("commands", "---"):
            continue
        flags = re.findall(r"`(--[a-z0-9-]+)", " ".join(cells[:2]))
        for item in re.findall(r"([a-z]+)(?: \(([^)]*)\))?(?:,|$)", cells[-1]):
            command, only = item
            if command not in PARSERS:
                continue
            named = re.findall(r"`(--[a-z0-9-]+)`", only) or flags
            for flag in named:
                assert flag in _visible(PARSERS[command]), (line, command, flag)
                checked += 1
    assert checked > 40


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every `awp ...` command line of the ```bash blocks of README.md and docs/*.md (lines
    joined at a trailing backslash, comments and what follows &&, | or ; dropped), as
    (where, argv)."""
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            joined = re.sub(r"\\\n", " ", block)
            for line in joined.splitlines():
                line = re.split(r" #| && | \| |; ", line, maxsplit=1)[0].strip()
                if line.startswith("awp ") and "..." not in line:
                    found.append((f"{doc.name}: {line[:60]}", shlex.split(line)[1:]))
    return found


def test_every_command_line_in_the_docs_parses():
    """A documented command uses flags the command has, with values it accepts (parsed only:
    nothing runs), so a renamed or removed flag cannot linger in the docs."""
    commands = _documented_commands()
    assert len(commands) > 60  # README's tour and usage.md's examples were found
    parser = build_parser()
    bad = []
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            bad.append(where)
    assert not bad, bad

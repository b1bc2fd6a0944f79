"""Every command's options say what they do and their default; every --help ends with examples."""

import argparse

import pytest

from earshot.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _states_its_default(action: argparse.Action, formatter: argparse.HelpFormatter) -> bool:
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.required:
        return True
    if action.default is None and "(this or --" in action.help:
        return True  # one of a required pair
    if isinstance(action, (argparse._StoreTrueAction,)) or not action.option_strings:
        return True  # a switch (off unless given) or a positional
    return "default" in formatter._get_help_string(action)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_option_has_help_with_its_default_and_the_help_ends_with_examples(name, capsys):
    parser = _subcommands()[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert action.help, f"earshot {name} {action.option_strings or action.dest}: no help text"
        assert _states_its_default(action, formatter), \
            f"earshot {name} {action.option_strings}: help does not give the default"
    with pytest.raises(SystemExit):
        main([name, "--help"])
    lines = capsys.readouterr().out.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line == "examples:")
    shown = lines[start + 1:]
    assert 1 <= len(shown) <= 4 and all(line.strip().startswith("earshot ") or "| earshot " in line
                                        for line in shown), lines


def test_prepare_refuses_an_option_its_corpus_does_not_take(tmp_path, capsys):
    code = main(["prepare", "fsdd", str(tmp_path), "--out", str(tmp_path / "o"), "--dev-speakers", "3"])
    assert code == 2 and "option --dev-speakers: prepare fsdd does not take it" in capsys.readouterr().err


def test_a_second_ctrl_c_stops_at_once_quietly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    # A command whose clean-up is slow: the first Ctrl-C starts it, the second cuts it short.
    code = ("import sys, time; import earshot.cli as cli\n"
            "def slow(args):\n"
            "    try:\n        print('running', flush=True); time.sleep(60)\n"
            "    finally:\n        print('cleaning up', flush=True); time.sleep(60)\n"
            "cli.cmd_plot = slow\n"
            "sys.exit(cli.main(['plot', 'x']))\n")
    (tmp_path / "slow.py").write_text(code)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "slow.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "running"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "cleaning up"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - start < 20
    assert "Traceback" not in err and "interrupted again" in err

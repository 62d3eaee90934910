"""Every CLI command that talks to the server, over TLS and mutual TLS, with the admin
token: one channel factory, options or MODELROUTE_TLS_* / MODELROUTE_ADMIN_TOKEN."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from modelroute.server.cli import app
from modelroute.server.process import publish_instance

from tests.helpers import Pki, Running, run_cli

StartServer = Callable[..., Awaitable[Running]]
TOKEN = "cli-admin-token-0123456789abcdef"

# Each command that calls the server, with arguments that succeed against the seed config.
COMMANDS: list[tuple[str, ...]] = [
    ("resolve", "rag.answer"),
    ("config", "status"),
    ("quotas",),
    ("alerts",),
    ("usage", "--by", "context"),
    ("experiments", "results", "rag-answer-q4"),
    ("override", "set", "reranker", "gpt-4o", "--for", "10m"),
    ("override", "clear", "reranker"),
    ("config", "apply", "-f", "CHANGE_FILE", "--dry-run"),
    ("config", "apply", "-f", "CHANGE_FILE", "--impact", "--window", "1h"),
    ("config", "history"),
    ("config", "show"),
    ("config", "diff", "SHOWN_REVISION"),
    ("config", "rollback", "SHOWN_REVISION", "--dry-run"),
    ("rollout", "status"),
]


def command_line(command: tuple[str, ...], tmp_path: Path, revision: int) -> list[str]:
    change = tmp_path / "change.yaml"
    change.write_text("contexts:\n  reranker: {model: gpt-4o, fallbacks: [gpt-4o-mini]}\n")
    placeholders = {"CHANGE_FILE": str(change), "SHOWN_REVISION": str(revision)}
    return [placeholders.get(part, part) for part in command]


async def run_every_command(tmp_path: Path, *args: str, env: dict[str, str]) -> None:
    """Each of COMMANDS in order, all succeeding; `config diff` and `rollback` use the
    revision `config show` printed (one the history holds)."""
    revision = 0
    for command in COMMANDS:
        line = command_line(command, tmp_path, revision)
        done = await run_cli(*line, *args, etcd="", prefix="", env=env)
        assert done.returncode == 0, (command, done.stderr)
        if command[:2] == ("config", "show"):
            revision = json.loads(done.stdout)["revision"]


def test_every_server_command_takes_the_connection_options() -> None:
    import typer.main

    group = typer.main.get_command(app)
    offline = {"serve", "config validate", "config get", "cooldown list", "cooldown clear"}
    offline |= {"db upgrade", "rollout restart"}
    seen: set[str] = set()

    def visit(command: object, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                visit(sub, f"{path} {name}".strip())
            return
        seen.add(path)
        if path in offline:
            return
        options = {opt for param in command.params for opt in param.opts}  # type: ignore[attr-defined]
        wanted = {"--server", "--data-dir", "--tls-ca", "--tls-cert", "--tls-key"}
        assert wanted | {"--admin-token-file"} <= options, path

    visit(group, "")
    groups = {"config", "experiments", "override", "rollout"}
    tested = {" ".join(c[:2]) if c[0] in groups else c[0] for c in COMMANDS}
    # The TLS tests below run every server command but one: promote needs a finished
    # rollout (tests/test_rollouts.py promotes one, through the same channel factory).
    assert tested == seen - offline - {"rollout promote"}


async def test_tls_server_needs_the_ca_and_the_token(
    seed: int, start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    running = await start_server(
        tls_cert=pki.server_cert, tls_key=pki.server_key, admin_tokens=[TOKEN]
    )
    at = ("--server", running.address)
    token = {"MODELROUTE_ADMIN_TOKEN": TOKEN}
    await run_every_command(tmp_path, *at, "--tls-ca", str(pki.ca), env=token)
    # The CA from the environment works the same.
    by_env = await run_cli(
        "config", "status", *at, etcd="", prefix="", env=token | {"MODELROUTE_TLS_CA": str(pki.ca)}
    )
    assert by_env.returncode == 0 and json.loads(by_env.stdout)["etcd_connected"] is True
    # Plaintext against TLS: refused at the handshake.
    plain = await run_cli("config", "status", *at, etcd="", prefix="", env=token)
    assert plain.returncode == 1 and plain.stderr.startswith("UNAVAILABLE")
    # No token: the server says what to send.
    anonymous = await run_cli("config", "status", *at, "--tls-ca", str(pki.ca), etcd="", prefix="")
    assert anonymous.returncode == 1 and anonymous.stderr.startswith("UNAUTHENTICATED")
    # A token file (first token; comments skipped), e.g. the server's own.
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# operators\n{TOKEN}\n")
    with_file = await run_cli(
        "quotas", *at, "--tls-ca", str(pki.ca), "--admin-token-file", str(token_file),
        etcd="", prefix="",
    )  # fmt: skip
    assert with_file.returncode == 0, with_file.stderr


async def test_mtls_server_needs_a_client_certificate(
    seed: int, start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    running = await start_server(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    )
    # Found through its data dir this time; the file says it speaks TLS.
    publish_instance(running.server)
    data_dir = ("--data-dir", str(running.server.options.data_dir))
    client_env = {
        "MODELROUTE_TLS_CA": str(pki.ca),
        "MODELROUTE_TLS_CERT": str(pki.client_cert),
        "MODELROUTE_TLS_KEY": str(pki.client_key),
    }
    await run_every_command(tmp_path, *data_dir, env=client_env)
    flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    by_flags = await run_cli(
        "resolve", "rag.answer", *data_dir, *flags, "--tls-key", str(pki.client_key),
        etcd="", prefix="",
    )  # fmt: skip
    assert json.loads(by_flags.stdout)["model_id"] == "gemini-3-flash-preview"
    no_cert = await run_cli(
        "resolve", "rag.answer", *data_dir, "--tls-ca", str(pki.ca), etcd="", prefix=""
    )
    assert no_cert.returncode == 1 and no_cert.stderr.startswith("UNAVAILABLE")
    half = await run_cli("resolve", "rag.answer", *data_dir, *flags, etcd="", prefix="")
    assert half.returncode == 2 and "--tls-cert and --tls-key must be given together" in half.stderr
    no_ca = await run_cli("resolve", "rag.answer", *data_dir, etcd="", prefix="")
    assert no_ca.returncode == 1
    assert "it uses TLS: pass its CA with --tls-ca or MODELROUTE_TLS_CA" in no_ca.stderr


@pytest.mark.parametrize("bad", ["missing.pem", "not-pem.txt"])
async def test_unreadable_tls_files_are_named(tmp_path: Path, bad: str) -> None:
    (tmp_path / "not-pem.txt").write_text("hello")
    result = await run_cli(
        "resolve", "x", "--server", "127.0.0.1:1", "--tls-ca", str(tmp_path / bad),
        etcd="", prefix="",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tls-ca: " in result.stderr and bad in result.stderr

"""`tgw lock VIN`, `tgw unlock VIN`, ...: send a command through the HTTP API and follow it.

Progress is printed as it happens (queued -> sent -> accepted -> executed). Exit status:
0 the car did it (executed or verified); 1 it did not (rejected, failed, expired, timed out:
the reason is printed); 2 the API refused the request or cannot be reached; 3 no final state
before the client gave up waiting.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer

from schemas import CommandAction

__all__ = ["commands_app", "register"]

API_URL_ENV = "TGW_API_URL"
API_TOKEN_ENV = "TGW_API_TOKEN"  # noqa: S105  # the variable's name, not a token

EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_REFUSED = 2
EXIT_GAVE_UP = 3

_SUCCESS = {"executed", "verified"}
_FINAL = {"rejected", "failed", "expired", "timed_out", "executed", "verified"}
_VERIFIABLE = {
    "lock",
    "unlock",
    "lock_and_disable_driving",
    "unlock_and_enable_driving",
}

commands_app = typer.Typer(no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help=f"The gateway's API, e.g. http://127.0.0.1:8080; default: {API_URL_ENV}, "
        "else TGW_HTTP__HOST/PORT.",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help=f"API token (role operator to send); default: {API_TOKEN_ENV}."),
]


class _Fail(Exception):  # noqa: N818  # internal control flow: exit with a message
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _base_url(url: str | None) -> str:
    url = url or os.environ.get(API_URL_ENV)
    if url:
        return url.rstrip("/")
    from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

    http = load_settings().http
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host  # noqa: S104  # a bind-all address to reach
    return f"http://{host}:{http.port}"


def _token(token: str | None) -> str:
    token = token or os.environ.get(API_TOKEN_ENV)
    if not token:
        raise _Fail(
            EXIT_REFUSED,
            f"no API token: set {API_TOKEN_ENV} or pass --token "
            "(an admin creates one with `tgw token create --name NAME --role operator`)",
        )
    return token


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(body, dict) and "detail" in body:
        return f"{body['detail']!s} (HTTP {response.status_code})"
    return f"HTTP {response.status_code}: {json.dumps(body)[:200]}"


def _clock(at: str) -> str:
    try:
        return datetime.fromisoformat(at).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return at


_EXPLAIN = {
    "queued": "waiting to be sent",
    "sent": "the broker has it; waiting for the car",
    "accepted": "the car took it",
    "executed": "done",
    "verified": "telemetry confirms it",
}


def _outcome_message(event: dict[str, Any]) -> str:
    status = event["status"]
    reason = event.get("reason") or "no reason given"
    preconditions = event.get("failed_preconditions") or []
    detail = event.get("detail")
    why = f"{reason} ({', '.join(preconditions)})" if preconditions else reason
    if detail and not preconditions:
        why = f"{why}: {detail}"
    helps = event.get("advice") or []  # what to do, as the API says it
    if helps:
        why = f"{why}; {'; '.join(helps)}"
    if status == "rejected":
        return f"rejected by the car: {why}"
    if status == "failed":
        return f"failed: {why}"
    if status == "expired":
        return f"expired: {detail or reason}"
    if status == "timed_out":
        return f"timed out: {detail or reason}"
    return str(status)


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class _Follower:
    """Prints each state once, in order, and remembers the last."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self._echo = echo
        self._seen: set[int] = set()
        self.last: dict[str, Any] | None = None

    def show(self, event: dict[str, Any]) -> None:
        transition = int(event["transition_id"])
        if transition in self._seen:
            return
        self._seen.add(transition)
        self.last = event
        status = event["status"]
        note = _EXPLAIN.get(status) or _outcome_message(event)
        self._echo(f"  {_clock(event['at'])}  {status:<10} {note}")


def _follow(
    client: httpx.Client,
    command: dict[str, Any],
    follower: _Follower,
    *,
    until_verified: bool,
    deadline: float,
) -> None:
    command_id = command["command_id"]

    def done() -> bool:
        last = follower.last
        if last is None:
            return False
        status = last["status"]
        if status == "executed" and until_verified and command["action"] in _VERIFIABLE:
            return False
        return status in _FINAL

    try:
        with client.stream(
            "GET", f"/v1/commands/{command_id}/events", timeout=httpx.Timeout(30.0)
        ) as response:
            if response.status_code == 200:
                for kind, data in _sse_events(response.iter_lines()):
                    if kind == "transition":
                        follower.show(json.loads(data))
                    if done() or kind == "end" or time.monotonic() > deadline:
                        return
    except httpx.HTTPError:
        pass  # the stream broke: poll below
    while not done() and time.monotonic() < deadline:
        response = client.get(f"/v1/commands/{command_id}")
        if response.status_code != 200:
            raise _Fail(EXIT_REFUSED, _problem(response))
        record = response.json()
        for transition in record.get("transitions") or []:
            latest = transition["status"] == record["status"]
            follower.show(
                {
                    "transition_id": transition["id"],
                    "status": transition["status"],
                    "at": transition["at"],
                    "reason": record["reason"] if latest else None,
                    "detail": record["detail"] if latest else None,
                    "failed_preconditions": record["failed_preconditions"] if latest else [],
                }
            )
        time.sleep(0.5)


def send_command(
    action: CommandAction,
    vin: str,
    *,
    url: str | None,
    token: str | None,
    ttl_s: int | None,
    idempotency_key: str | None,
    wait: bool,
    until_verified: bool,
    echo: Callable[[str], None] = typer.echo,
) -> int:
    """Send one command and (unless `wait` is False) follow it; return the exit status."""
    base = _base_url(url)
    headers = {"Authorization": f"Bearer {_token(token)}"}
    body: dict[str, Any] = {"action": action.value}
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    started = time.monotonic()
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10.0) as client:
            response = client.post(f"/v1/vehicles/{vin}/commands", json=body)
            if response.status_code != 202:
                raise _Fail(EXIT_REFUSED, f"{action.value} {vin} refused: {_problem(response)}")
            command = response.json()
            expires = datetime.fromisoformat(command["expires_at"])
            ttl_left = max(0.0, expires.timestamp() - time.time())
            echo(
                f"{action.value} {vin}: command {command['command_id']} "
                f"(must reach the car within {ttl_left:.0f} s)"
            )
            if not wait:
                return EXIT_OK
            follower = _Follower(echo)
            # The gateway decides by expiry + grace + answer time-out; wait a little longer.
            deadline = time.monotonic() + ttl_left + 120.0
            _follow(client, command, follower, until_verified=until_verified, deadline=deadline)
    except httpx.HTTPError as exc:
        raise _Fail(
            EXIT_REFUSED, f"cannot reach the gateway API at {base} ({exc}): is the gateway running?"
        ) from exc
    last = follower.last
    if last is None or last["status"] not in _FINAL:
        raise _Fail(
            EXIT_GAVE_UP, f"no final answer yet; see `tgw commands show {command['command_id']}`"
        )
    elapsed = time.monotonic() - started
    if last["status"] in _SUCCESS:
        echo(f"{action.value} {vin}: {last['status']} in {elapsed:.1f} s")
        return EXIT_OK
    raise _Fail(EXIT_NOT_DONE, f"{action.value} {vin}: {_outcome_message(last)}")


def _run(action: CommandAction) -> Callable[..., None]:
    def command(  # noqa: PLR0917  # typer maps each parameter to an option
        vin: Annotated[str, typer.Argument(help="The car's VIN.")],
        url: UrlOption = None,
        token: TokenOption = None,
        ttl: Annotated[
            int | None, typer.Option("--ttl", help="Seconds the car may still take it.")
        ] = None,
        idempotency_key: Annotated[
            str | None,
            typer.Option(help="Retry-safe: the same key never sends a second command."),
        ] = None,
        wait: Annotated[bool, typer.Option(help="Follow the command to its outcome.")] = True,
        verified: Annotated[
            bool, typer.Option("--verified", help="Wait until telemetry confirms the lock.")
        ] = False,
    ) -> None:
        try:
            code = send_command(
                action,
                vin,
                url=url,
                token=token,
                ttl_s=ttl,
                idempotency_key=idempotency_key,
                wait=wait,
                until_verified=verified,
            )
        except _Fail as failure:
            typer.secho(failure.message, err=True, fg=typer.colors.RED)
            raise typer.Exit(failure.code) from None
        raise typer.Exit(code)

    command.__doc__ = f"Send `{action.value}` to a car and wait for the outcome."
    return command


@commands_app.command("show")
def show(
    command_id: Annotated[str, typer.Argument(help="The command id.")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Print one command with its transitions (JSON)."""
    try:
        base = _base_url(url)
        headers = {"Authorization": f"Bearer {_token(token)}"}
        response = httpx.get(f"{base}/v1/commands/{command_id}", headers=headers, timeout=10.0)
    except _Fail as failure:
        typer.secho(failure.message, err=True, fg=typer.colors.RED)
        raise typer.Exit(failure.code) from None
    except httpx.HTTPError as exc:
        typer.secho(f"cannot reach the gateway API ({exc})", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_REFUSED) from exc
    if response.status_code != 200:
        typer.secho(_problem(response), err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_REFUSED)
    typer.echo(json.dumps(response.json(), indent=2))


def register(root: typer.Typer) -> None:
    """Add `tgw lock`, `tgw unlock`, ... and `tgw commands show` to the root command."""
    for action in CommandAction:
        root.command(name=action.value.replace("_", "-"))(_run(action))
    root.add_typer(commands_app, name="commands", help="Commands already sent.")

"""`berth login/logout/ls/tags/inspect/cp/rm/referrers`: the client library from the shell.

They speak HTTP to any registry and never open Berth's database. References are
`HOST[:PORT]/REPO[:TAG|@DIGEST]` (plain HTTP for loopback hosts, https otherwise; an
`http://` or `https://` prefix says so explicitly) or, for cp, `oci:DIR[:TAG]`.

Exit codes, for scripts: 0 done, 1 any other failure, 2 bad usage, 3 not found (no such
repository, tag, manifest or blob), 4 authentication or authorization refused, 5 the
registry could not be reached, 6 content did not match its digest.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from app.client import auth, errors
from app.client.copy import RemoteRepository, Store, copy
from app.client.layout import OciLayout
from app.client.media import Manifest
from app.client.registry import RegistryClient

EXIT_NOT_FOUND, EXIT_AUTH, EXIT_UNREACHABLE, EXIT_DIGEST = 3, 4, 5, 6
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"berth: {message}", err=True)
    sys.exit(code)


def _exit_codes(command: F) -> F:
    """Library errors become one line on stderr and an exit code that says what kind."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (errors.ManifestUnknown, errors.NameUnknown, errors.BlobUnknown,
                errors.NotFound) as exc:  # fmt: skip
            _fail(str(exc), EXIT_NOT_FOUND)
        except (errors.Unauthorized, errors.Denied, errors.AuthError) as exc:
            _fail(str(exc), EXIT_AUTH)
        except errors.TransportError as exc:
            _fail(str(exc), EXIT_UNREACHABLE)
        except errors.DigestMismatch as exc:
            _fail(f"content does not match its digest: {exc}", EXIT_DIGEST)
        except errors.ClientError as exc:
            _fail(str(exc), 1)

    return run  # type: ignore[return-value]


@dataclass(frozen=True)
class Reference:
    registry: str  # "host:port", or a URL with its scheme
    repo: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        at = f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else ""
        return f"{self.registry}/{self.repo}{at}"


def _split_registry(text: str) -> tuple[str, str]:
    scheme = ""
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            scheme, text = prefix, text[len(prefix) :]
    host, _, rest = text.partition("/")
    if not scheme and not ("." in host or ":" in host or host == "localhost"):
        raise click.BadParameter(f"{text!r}: name the registry (HOST[:PORT]/REPO)")
    return scheme + host, rest


def parse_reference(text: str, need_repo: bool = True) -> Reference:
    registry, rest = _split_registry(text)
    digest = tag = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
    if need_repo and not rest:
        raise click.BadParameter(f"{text!r}: no repository")
    return Reference(registry, rest, tag, digest)


_tls = click.option(
    "--tls-verify/--no-tls-verify", default=True, help="verify the registry's certificate"
)
_authfile = click.option(
    "--authfile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="saved logins (default: podman's and docker's files)",
)
_creds = click.option("--creds", metavar="USER:PASSWORD", default=None, help="instead of saved")


def _client(
    registry: str, tls_verify: bool, authfile: Path | None, creds: str | None
) -> RegistryClient:
    credentials: auth.Credentials | None = None
    if creds:
        user, _, password = creds.partition(":")
        credentials = auth.Credentials(user, password)
    client = RegistryClient(registry, auth=credentials if creds else False, tls=tls_verify)
    if not creds:
        files = [authfile] if authfile is not None else None
        client.auth.credentials = auth.saved_credentials(client.host, files)
    return client


def _progress_factory() -> Any:
    from app.client.progress import bar

    return lambda label, total: bar(label, total)


def register(main: click.Group) -> None:
    for command in (login, logout, ls, tags, inspect, cp, rm, referrers):
        main.add_command(command)


@click.command()
@click.argument("registry")
@click.option("--username", "-u", prompt=True)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@_tls
@_authfile
@_exit_codes
def login(
    registry: str, username: str, password_stdin: bool, tls_verify: bool, authfile: Path | None
) -> None:
    """Check credentials against REGISTRY and save them (as docker and podman do)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    client = RegistryClient(registry, auth=(username, password), tls=tls_verify)
    with client:
        client.ping()
    path = authfile or auth.default_auth_file()
    auth.save_credentials(path, client.host, auth.Credentials(username, password))
    click.echo(f"Login Succeeded (saved in {path})")


@click.command()
@click.argument("registry")
@_authfile
@_exit_codes
def logout(registry: str, authfile: Path | None) -> None:
    """Forget the saved credentials for REGISTRY."""
    host = RegistryClient(registry, auth=False).host
    files = [authfile] if authfile else [p for p in auth.auth_files() if p.is_file()]
    removed = [path for path in files if auth.remove_credentials(path, host)]
    if not removed:
        _fail(f"not logged in to {host}", EXIT_NOT_FOUND)
    click.echo(f"Removed login credentials for {host}")


@click.command()
@click.argument("location")
@_tls
@_authfile
@_creds
@_exit_codes
def ls(location: str, tls_verify: bool, authfile: Path | None, creds: str | None) -> None:
    """List the repositories of REGISTRY[/PREFIX]."""
    registry, prefix = _split_registry(location)
    prefix = prefix.strip("/")
    with _client(registry, tls_verify, authfile, creds) as client:
        for name in client.catalog(n=1000):
            if not prefix or name == prefix or name.startswith(prefix + "/"):
                click.echo(name)


@click.command()
@click.argument("repository")
@_tls
@_authfile
@_creds
@_exit_codes
def tags(repository: str, tls_verify: bool, authfile: Path | None, creds: str | None) -> None:
    """List the tags of REGISTRY/REPOSITORY."""
    ref = parse_reference(repository)
    with _client(ref.registry, tls_verify, authfile, creds) as client:
        for tag in client.tags(ref.repo, n=1000):
            click.echo(tag)


def _summary(client: RegistryClient, ref: Reference, manifest: Manifest) -> dict[str, Any]:
    doc = manifest.json()
    info: dict[str, Any] = {
        "name": f"{ref.registry}/{ref.repo}",
        "digest": manifest.digest,
        "mediaType": manifest.media_type,
        "size": manifest.size,
    }
    if manifest.is_index:
        info["platforms"] = [
            {
                "digest": child.get("digest"),
                "platform": "/".join(
                    str(v)
                    for v in (
                        (child.get("platform") or {}).get("os"),
                        (child.get("platform") or {}).get("architecture"),
                        (child.get("platform") or {}).get("variant"),
                    )
                    if v
                ),
                "size": child.get("size"),
            }
            for child in manifest.children()
        ]
        return info
    config_desc = doc.get("config") or {}
    info["artifactType"] = doc.get("artifactType") or config_desc.get("mediaType")
    layers = doc.get("layers") or []
    info["layers"] = [{"digest": la.get("digest"), "size": la.get("size")} for la in layers]
    info["totalSize"] = sum(int(la.get("size") or 0) for la in layers) + int(
        config_desc.get("size") or 0
    )
    if config_desc.get("digest") and int(config_desc.get("size") or 0) < 4 * 1024 * 1024:
        try:
            config = json.loads(client.get_blob(ref.repo, str(config_desc["digest"])))
        except ValueError:
            config = None
        if isinstance(config, dict):
            info["platform"] = "/".join(
                str(config[k]) for k in ("os", "architecture") if config.get(k)
            )
            info["created"] = config.get("created")
            info["config"] = config.get("config")
    if doc.get("subject"):
        info["subject"] = doc["subject"].get("digest")
    if doc.get("annotations"):
        info["annotations"] = doc["annotations"]
    return info


@click.command()
@click.argument("reference")
@click.option("--raw", is_flag=True, help="the manifest's exact bytes")
@click.option("--json", "as_json", is_flag=True, help="a JSON summary")
@_tls
@_authfile
@_creds
@_exit_codes
def inspect(
    reference: str,
    raw: bool,
    as_json: bool,
    tls_verify: bool,
    authfile: Path | None,
    creds: str | None,
) -> None:
    """Show a manifest: digest, media type, platforms or layers and sizes, the config."""
    ref = parse_reference(reference)
    with _client(ref.registry, tls_verify, authfile, creds) as client:
        manifest = client.get_manifest(ref.repo, ref.reference)
        if raw:
            sys.stdout.buffer.write(manifest.body)
            sys.stdout.buffer.flush()
            return
        info = _summary(client, ref, manifest)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"Name:       {info['name']}")
    click.echo(f"Digest:     {info['digest']}")
    click.echo(f"MediaType:  {info['mediaType']}")
    for entry in info.get("platforms", []):
        click.echo(f"Platform:   {entry['platform'] or '?':<16} {entry['digest']}")
    if "layers" in info:
        if info.get("platform"):
            click.echo(f"Platform:   {info['platform']}")
        click.echo(f"Size:       {info['totalSize']} bytes in {len(info['layers'])} layers")
        for layer in info["layers"]:
            click.echo(f"  {layer['digest']}  {layer['size']}")


def _store(text: str, tls_verify: bool, authfile: Path | None, creds: str | None) -> tuple[
    Store, str | None, RegistryClient | None
]:  # fmt: skip
    if text.startswith("oci:"):
        path, _, tag = text[4:].partition(":")
        return OciLayout(Path(path)), tag or None, None
    ref = parse_reference(text)
    client = _client(ref.registry, tls_verify, authfile, creds)
    return RemoteRepository(client, ref.repo), ref.digest or ref.tag, client


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--all", "all_platforms", is_flag=True, help="every platform of an index")
@click.option("--platform", default=None, metavar="OS/ARCH", help="without --all (default: this)")
@click.option("--no-referrers", is_flag=True, help="leave signatures, SBOMs ... behind")
@click.option("--src-creds", default=None, metavar="USER:PASSWORD")
@click.option("--dest-creds", default=None, metavar="USER:PASSWORD")
@click.option("--quiet", "-q", is_flag=True, help="no progress, only the digest")
@_tls
@_authfile
@_exit_codes
def cp(
    source: str,
    destination: str,
    all_platforms: bool,
    platform: str | None,
    no_referrers: bool,
    src_creds: str | None,
    dest_creds: str | None,
    quiet: bool,
    tls_verify: bool,
    authfile: Path | None,
) -> None:
    """Copy an image (or an index with --all) and its referrers: registry to registry,
    oci:DIR[:TAG] to a registry or back. Blobs the destination has are not sent."""
    src, src_ref, src_client = _store(source, tls_verify, authfile, src_creds)
    dst, dst_ref, dst_client = _store(destination, tls_verify, authfile, dest_creds)
    wanted = None
    if platform:
        os_, _, arch = platform.partition("/")
        wanted = (os_, arch)
    try:
        report = copy(
            src,
            src_ref or "latest",
            dst,
            dst_ref or (src_ref if src_ref and ":" not in src_ref else None),
            all_platforms=all_platforms,
            platform=wanted,
            referrers=not no_referrers,
            progress=None if quiet else _progress_factory(),
        )
    finally:
        for client in (src_client, dst_client):
            if client is not None:
                client.close()
    if quiet:
        click.echo(report.digest)
        return
    click.echo(
        f"Copied {report.digest}: {report.manifests} manifests, {report.blobs} blobs"
        f" ({report.bytes} bytes); skipped {report.blobs_present} blobs and"
        f" {report.manifests_present} manifests already there"
    )


@click.command()
@click.argument("reference")
@_tls
@_authfile
@_creds
@_exit_codes
def rm(reference: str, tls_verify: bool, authfile: Path | None, creds: str | None) -> None:
    """Delete REF: by digest the manifest and its tags, by tag the tag only."""
    ref = parse_reference(reference)
    if not ref.tag and not ref.digest:
        raise click.BadParameter(f"{reference!r}: name a tag or a digest to delete")
    with _client(ref.registry, tls_verify, authfile, creds) as client:
        client.delete_manifest(ref.repo, ref.reference)
    click.echo(f"Deleted {ref}")


@click.command()
@click.argument("reference")
@click.option("--artifact-type", default=None)
@click.option("--json", "as_json", is_flag=True)
@_tls
@_authfile
@_creds
@_exit_codes
def referrers(
    reference: str,
    artifact_type: str | None,
    as_json: bool,
    tls_verify: bool,
    authfile: Path | None,
    creds: str | None,
) -> None:
    """List the manifests that refer to REF (signatures, SBOMs, attestations)."""
    ref = parse_reference(reference)
    with _client(ref.registry, tls_verify, authfile, creds) as client:
        digest = ref.digest or client.get_manifest(ref.repo, ref.reference).digest
        found = client.referrers(ref.repo, digest, artifact_type)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for entry in found:
        click.echo(
            f"{entry.get('digest')}\t{entry.get('artifactType') or '-'}\t{entry.get('size')}"
        )

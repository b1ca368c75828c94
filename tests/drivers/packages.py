"""Installs what the suite needs from Debian's packages and the npm
registry, when it is missing (pinned: the Debian release's version; the
Node packages by package-lock.json)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL)


def npm_ci(directory: Path) -> None:
    """`npm ci` in `directory`, unless its node_modules already matches its
    package-lock.json (npm keeps a copy of the lock it installed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        apt_install("nodejs", "npm")
    installed = directory / "node_modules" / ".package-lock.json"
    lock = directory / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)


def unpacked(package: str, member: str, into: Path) -> Path:
    """One file of a Debian package, unpacked under `into` (not installed:
    for a tool whose package would also install a service)."""
    target = into / member
    if not target.exists():
        into.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "-qq", package], cwd=into, check=True, stderr=subprocess.DEVNULL)
        deb = next(into.glob(f"{package}_*.deb"))
        subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{into}' './{member}'", shell=True, check=True)
        deb.unlink()
    return target

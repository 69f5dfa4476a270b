#!/usr/bin/env python3
"""Checks docker-compose.yml as far as a machine without a Docker engine can (cargo xtask ci).

docker-compose validates the file against the Compose schema and resolves it (anchors, every
profile's services); then every invoq container's command must be a real `invoq` subcommand,
its health check a real `invoq health` call, and every INVOQ_* variable it sets one that some
invoq subcommand in the file reads (the services share one environment block). The Dockerfile
must build the binary the containers run.

Usage: check-compose.py <path to the invoq binary>
"""

import re
import subprocess
import sys

import yaml

PROFILES = ["local", "localstack", "aws"]


def resolved():
    output = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"],
        check=True, capture_output=True, text=True,
    ).stdout
    return yaml.safe_load(output)


def help_text(invoq, subcommand):
    result = subprocess.run([invoq, subcommand, "--help"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"`invoq {subcommand}` is not a subcommand: {result.stderr.strip()}")
    return result.stdout


def main():
    invoq = sys.argv[1]
    problems = []
    services = resolved()["services"]
    for profile in PROFILES:
        if not any(profile in service.get("profiles", []) for service in services.values()):
            problems.append(f"no service in profile {profile}")
    invoq_services = {n: s for n, s in services.items() if s.get("image") == "invoq:local"}
    read = set()
    for name, service in invoq_services.items():
        usage = help_text(invoq, service["command"][0])
        read |= set(re.findall(r"env: (INVOQ_[A-Z_]+)[=\]]", usage))
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:3] == ["invoq", "health"]:
            help_text(invoq, "health")
    for name, service in invoq_services.items():
        for variable in service.get("environment", {}):
            if variable.startswith("INVOQ_") and variable not in read:
                problems.append(f"{name}: no invoq service reads {variable}")
    print("services:", ", ".join(sorted(services)))
    dockerfile = open("Dockerfile").read()
    if "cargo build --release --package invoq" not in dockerfile or \
            "/target/release/invoq /usr/local/bin/invoq" not in dockerfile:
        problems.append("the Dockerfile does not build and install the invoq binary")
    for problem in problems:
        print("error:", problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

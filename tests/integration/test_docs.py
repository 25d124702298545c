"""README, `cangrejo help`, openapi.yaml and the code say the same thing."""

import pathlib
import re
import subprocess

import requests
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_variable_of_help_is_in_the_readme(server):
    help_text = subprocess.run([server.binary, "help"], capture_output=True, text=True,
                               check=True).stdout
    variables = re.findall(r"^  ([A-Z][A-Z0-9_]+) ", help_text, re.M)
    assert len(variables) > 20
    readme = (ROOT / "README.md").read_text()
    missing = [v for v in variables if f"`{v}`" not in readme and f"{v}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_every_route_is_in_the_openapi_document(server):
    main_c = (ROOT / "server" / "main.c").read_text()
    routes = set(re.findall(r'\{SRV_(GET|POST|PUT|DELETE|PATCH), "([^"]+)"', main_c))
    spec = yaml.safe_load((ROOT / "openapi" / "openapi.yaml").read_text())
    documented = {(method.upper(), path) for path, ops in spec["paths"].items()
                  for method in ops if method != "parameters"}
    assert routes, "no routes found in server/main.c"
    assert routes == documented


def test_openapi_json_is_the_yaml(server):
    served = requests.get(f"{server.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    spec = yaml.safe_load((ROOT / "openapi" / "openapi.yaml").read_text())
    assert served.json() == spec

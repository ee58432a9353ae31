"""What a molecule scenario's converge left for its verifier: the scenario's vars files and the JSON files (reports,
snapshots) in the ephemeral directory. Shared by every scenario's testinfra tests: this directory's own tests import
it as a neighbour, the other scenarios' as ../../resources/tests; each puts the directory on sys.path first (with
the checkout's pytest.ini, --import-mode=importlib, pytest adds no test directory to it)."""
from __future__ import annotations

import json
import os

import yaml

EPHEMERAL = os.environ['MOLECULE_EPHEMERAL_DIRECTORY']
SCENARIO = os.environ['MOLECULE_SCENARIO_DIRECTORY']
REPORTS = os.path.join(EPHEMERAL, 'reports')
INVENTORY = os.path.join(EPHEMERAL, 'inventory')


def scenario_vars(name):
    """The scenario's vars/<name> (YAML)."""
    with open(os.path.join(SCENARIO, 'vars', name)) as handle:
        return yaml.safe_load(handle)


def load_json(*parts):
    """A JSON file below the ephemeral directory."""
    with open(os.path.join(EPHEMERAL, *parts)) as handle:
        return json.load(handle)


def report(run_id, name='report.json'):
    """A file of a run's reports (reports/<run_id>/<name>), parsed."""
    return load_json('reports', run_id, name)

"""The README's example alert rules are valid and fire when they should (``promtool test rules``)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

TESTS = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pam_duo_py_duo_up{instance="h1"}'
        values: '1 0 0 0 0 0 0 0 0'
      - series: 'pam_duo_py_duo_up{instance="h2"}'
        values: '1 0 0 1 0 0 0 0 0'
      - series: 'pam_duo_py_failsafe_logins_total{instance="h1"}'
        values: '0 0 0 1 1 1'
      - series: 'pam_duo_py_failsafe_logins_total{instance="h2"}'
        values: '3 3 3 3 3 3'
      - series: 'pam_duo_py_duo_clock_offset_seconds{instance="h1"}'
        values: '0 -75 -75'
      - series: 'pam_duo_py_duo_clock_offset_seconds{instance="h2"}'
        values: '59 59 59'
    alert_rule_test:
      - eval_time: 5m
        alertname: DuoUnreachable
        exp_alerts: []
      - eval_time: 6m
        alertname: DuoUnreachable
        exp_alerts:
          - exp_labels: {alertname: DuoUnreachable, instance: h1}
            exp_annotations:
              summary: "h1: Duo has been unreachable for 5 minutes (logins fail, or pass fail-safe)"
      - eval_time: 2m
        alertname: DuoFailsafeLogin
        exp_alerts: []
      - eval_time: 4m
        alertname: DuoFailsafeLogin
        exp_alerts:
          - exp_labels: {alertname: DuoFailsafeLogin, instance: h1}
            exp_annotations:
              summary: "h1: a login was let in WITHOUT a second factor (failmode = safe); see pam-duo-py audit"
      - eval_time: 2m
        alertname: DuoClockOffset
        exp_alerts:
          - exp_labels: {alertname: DuoClockOffset, instance: h1}
            exp_annotations:
              summary: "h1: clock differs from Duo's by 75 s; Duo refuses requests past a few minutes: fix NTP"
"""


def test_readme_alert_rules(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool (Debian package prometheus) is a test dependency: run scripts/test as root once")
    section = README.read_text().split("## Monitoring", 1)[1]
    rules = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert rules, "the Monitoring section has the example rules"
    (tmp_path / "rules.yml").write_text(rules.group(1))
    (tmp_path / "tests.yml").write_text(TESTS)
    check = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "3 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr

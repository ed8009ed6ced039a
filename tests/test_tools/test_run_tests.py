"""tools/run_tests.sh (what CI runs) exits with the tests' verdict: 0 when both stacks' tests
pass, non-zero when either fails. Run on a copy of the script beside a stand-in setup_env.sh
and stand-in venvs whose `python -m pytest` exits with a chosen status."""
import os
import shutil
import subprocess

import pytest

from testing_utils import REPO

STAND_IN_SETUP = '''#!/usr/bin/env bash
# makes $KD_DET_VENV/bin/python: a "pytest" that exits with the status the test chose
mkdir -p "$KD_DET_VENV/bin"
name=$(basename "$KD_DET_VENV")
printf '#!/usr/bin/env bash\\necho "$0 $*" >> "%s/calls"\\nexit ${RC_%s:-0}\\n' \\
    "$(dirname "$KD_DET_VENV")" "${name//[.-]/_}" > "$KD_DET_VENV/bin/python"
chmod +x "$KD_DET_VENV/bin/python"
'''


def run_tests(tmp_path, **rcs):
    os.makedirs(tmp_path / 'tools', exist_ok=True)
    shutil.copy(os.path.join(REPO, 'tools', 'run_tests.sh'), tmp_path / 'tools')
    (tmp_path / 'tools' / 'setup_env.sh').write_text(STAND_IN_SETUP)
    env = {k: v for k, v in os.environ.items() if not k.startswith('KD_DET_')}
    env.update({f'RC_{k}': str(v) for k, v in rcs.items()})
    run = subprocess.run(['bash', str(tmp_path / 'tools' / 'run_tests.sh')], env=env,
                         capture_output=True, text=True, timeout=60)
    calls = (tmp_path / 'calls').read_text().splitlines() if (tmp_path / 'calls').exists() else []
    return run, calls


def test_green_on_both_stacks_exits_0(tmp_path):
    run, calls = run_tests(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [c.split('/')[-3] for c in calls] == ['.venv', '.venv-oldest']
    assert calls[1].endswith('-m pytest tests -q -ra -m not slow or stacks')


@pytest.mark.parametrize('failing', ['_venv', '_venv_oldest'])
def test_a_failing_stack_fails_the_run(tmp_path, failing):
    run, calls = run_tests(tmp_path, **{failing: 1})
    assert run.returncode != 0, run.stdout + run.stderr

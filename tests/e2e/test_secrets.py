"""After every runbook the e2e session ran against the example stacks (this module runs after
them): everything those runs left, searched for every secret they used."""

from __future__ import annotations

import json

import pytest

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity
from tests.e2e.secrets_scan import leaks, readable_texts, ssh_key_fragments, stored_secrets

pytestmark = pytest.mark.e2e


def test_no_secret_in_logs_artifacts_or_errors(stacks, lab, lab_blocks):
    secrets = stored_secrets()
    assert any(name.endswith("postgres-superuser") for name in secrets)  # the stacks' secrets
    secrets["API token"] = DigitalOceanCredentials.load(lab_blocks).token.get_secret_value()
    secrets["Spaces secret"] = SpacesCredentials.load(lab_blocks).secret_key.get_secret_value()
    secrets.update(ssh_key_fragments(lab["ssh_private_key"]))
    assert SSHIdentity.load(lab_blocks).private_key  # the key being searched for is the one used
    texts = readable_texts()
    assert len(texts) > 50  # the runs did leave logs to search
    assert leaks(secrets, texts) == []
    # And the return values of the runs (what the CLI prints).
    for _, result in stacks.values():
        assert leaks(secrets, {"result": json.dumps(result, default=str)}) == []

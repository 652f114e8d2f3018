"""Small guards of the security work: TLS settings that cannot silently fall back to plain MQTT,
URLs shown without their credentials, and input the hostile-input run found accepted or crashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from isoperf.codec import DecodeError, decode
from isoperf.influx import public_url
from isoperf.schemas import Leakage
from isoperf.settings import ServiceSettings
from isoperf.sources.mqtt import broker_name, tls_context
from isoperf.tools.devcerts import issue, make_ca


def test_a_ca_or_certificate_without_tls_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ISOPERF_MQTT_TLS is not true"):
        ServiceSettings(mqtt_ca_file=tmp_path / "ca.crt")
    with pytest.raises(ValidationError, match="go together"):
        ServiceSettings(mqtt_tls=True, mqtt_cert_file=tmp_path / "c.crt")


def test_the_tls_context_verifies_and_loads_the_client_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    client = issue(ca, tmp_path / "gw", "gateway-theatre-1", client=True)
    s = ServiceSettings(mqtt_tls=True, mqtt_ca_file=ca.cert, mqtt_cert_file=client.cert, mqtt_key_file=client.key)
    context = tls_context(s)
    assert context is not None and context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    assert broker_name(s).startswith("mqtts://")
    assert tls_context(ServiceSettings()) is None
    with pytest.raises(ValueError, match="cannot read the CA certificate"):
        tls_context(ServiceSettings(mqtt_tls=True, mqtt_ca_file=tmp_path / "missing.crt"))


def test_urls_are_shown_without_their_credentials() -> None:
    assert public_url("https://isoperf:s3cret@influx.hospital.example:8086") == "https://influx.hospital.example:8086"
    assert public_url("http://127.0.0.1:8086") == "http://127.0.0.1:8086"


def test_json_nested_deeper_than_the_stack_is_a_decode_error() -> None:
    deep = b'{"t": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode(deep, max_bytes=10**7)


@pytest.mark.parametrize("value", [True, "1", [1.0]])
def test_leakage_numbers_are_strict(value: object) -> None:
    good = {"t": 1_767_225_600.0, "state": "monitoring", "percent": 1.0}
    assert Leakage.model_validate(good).percent == 1.0
    assert Leakage.model_validate({**good, "percent": 1}).percent == 1.0  # an integer is a number
    with pytest.raises(ValidationError):
        Leakage.model_validate(json.loads(json.dumps({**good, "percent": value})))

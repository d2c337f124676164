"""Target profiles at manifest load: an SSH port out of range and ssh_options that would run a
command on the build host are located manifest errors (issue 12, finding 11)."""

from __future__ import annotations

import re

import pytest

from release.errors import ManifestError
from release.manifest import load
from release.targets import local_command_options
from tests.conftest import tiny_manifest_dict, write_manifest


def load_doc(tmp_path, doc):
    return load(write_manifest(tmp_path, doc), tmp_path)


def line_of(tmp_path, text: str) -> int:
    lines = (tmp_path / "tiny.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


@pytest.mark.parametrize("port", ["0", "70000", "65536"])
def test_an_ssh_port_out_of_range_is_a_located_error(tmp_path, port):
    with pytest.raises(ManifestError) as caught:
        load_doc(tmp_path, tiny_manifest_dict(target={"name": "rpi4", "runner": f"ssh://pi@pi4:{port}"}))
    line = line_of(tmp_path, "runner:")
    assert re.search(rf"line {line}, target.runner: .*port {port} is out of range \(an SSH port is 1-65535\)",
                     str(caught.value)), str(caught.value)


def test_ports_in_range_load(tmp_path):
    for port in (1, 22, 65535):
        m = load_doc(tmp_path, tiny_manifest_dict(target={"name": "rpi4", "runner": f"ssh://pi@pi4:{port}"}))
        assert m.device["runner"] == f"ssh://pi@pi4:{port}"


# Every way ssh reads an option: -oX=Y, -o X=Y, -o "X Y", -o X Y split in one token, any case, one
# string, getopt clusters (-vo), and the options that run or load code on this machine.
REFUSED = [
    (["-oProxyCommand=touch /tmp/pwned"], "ProxyCommand"),
    (["-o", "ProxyCommand=nc %h %p"], "ProxyCommand"),
    (["-o", "proxycommand nc %h %p"], "ProxyCommand"),
    (["-o", "PROXYCOMMAND = nc %h %p"], "ProxyCommand"),
    (["-vvoProxyCommand=sh -c x"], "ProxyCommand"),
    (["-o", "LocalCommand=touch /tmp/pwned", "-o", "PermitLocalCommand=yes"], "LocalCommand"),
    (["-oPermitLocalCommand=yes"], "PermitLocalCommand"),
    (["-o", "KnownHostsCommand=/bin/sh -c x"], "KnownHostsCommand"),
    (["-o", "Match exec \"touch /tmp/pwned\""], "Match"),
    (["-o", "Include=/tmp/evil.conf"], "Include"),
    (["-o", "PKCS11Provider=/tmp/evil.so"], "PKCS11Provider"),
    (["-I", "/tmp/evil.so"], "-I"),
    (["-o", "SecurityKeyProvider=/tmp/evil.so"], "SecurityKeyProvider"),
    (["-F", "/home/me/other_config"], "-F"),
    (["-F/tmp/evil.conf"], "-F"),
    ("-i key -o ProxyCommand='nc %h %p'", "ProxyCommand"),  # one string
]


@pytest.mark.parametrize("options, named", REFUSED)
def test_ssh_options_that_run_local_commands_are_refused_at_load(tmp_path, options, named):
    target = {"name": "rpi4", "runner": "ssh://pi@pi4", "ssh_options": options}
    with pytest.raises(ManifestError) as caught:
        load_doc(tmp_path, tiny_manifest_dict(target=target))
    text = str(caught.value)
    line = line_of(tmp_path, "name: rpi4")
    assert f"line {line}, target" in text and "target.ssh_options" in text, text
    assert named in text and "runs a command" in text and "allow_local_commands: true" in text, text


@pytest.mark.parametrize("options, named", REFUSED)
def test_opting_in_allows_them(tmp_path, options, named):
    target = {"name": "rpi4", "runner": "ssh://pi@pi4", "ssh_options": options, "allow_local_commands": True}
    m = load_doc(tmp_path, tiny_manifest_dict(target=target))
    assert m.device["allow_local_commands"] is True and m.device["ssh_options"]


def test_the_opt_in_may_live_on_the_named_profile(tmp_path):
    doc = tiny_manifest_dict(target={"name": "lab", "ssh_options": ["-oProxyCommand=nc %h %p"]},
                             targets={"lab": {"cores": 4, "runner": "ssh://pi@lab", "allow_local_commands": True}})
    assert load_doc(tmp_path, doc).device["ssh_options"] == ["-oProxyCommand=nc %h %p"]
    doc["targets"]["lab"]["ssh_options"] = doc["target"].pop("ssh_options")
    doc["targets"]["lab"].pop("allow_local_commands")
    with pytest.raises(ManifestError, match="ProxyCommand"):  # a profile under targets: is checked too
        load_doc(tmp_path, doc)


def test_harmless_options_load_and_a_string_is_split(tmp_path):
    options = ["-F", "/dev/null", "-i", "/keys/id", "-o", "IdentitiesOnly=yes", "-J", "jump@bastion",
               "-oProxyJump=jump@bastion", "-o", "UserKnownHostsFile=/k", "-p2222", "-4", "-C"]
    m = load_doc(tmp_path, tiny_manifest_dict(target={"name": "rpi4", "runner": "ssh://pi@pi4",
                                                      "ssh_options": options}))
    assert m.device["ssh_options"] == options and m.device["allow_local_commands"] is False
    m = load_doc(tmp_path, tiny_manifest_dict(target={"name": "rpi4", "runner": "ssh://pi@pi4",
                                                      "ssh_options": "-i '/my keys/id' -o IdentitiesOnly=yes"}))
    assert m.device["ssh_options"] == ["-i", "/my keys/id", "-o", "IdentitiesOnly=yes"]


@pytest.mark.parametrize("options, expected", [
    (["evil.example", "touch /tmp/x"], "only options"),
    (["--", "host"], "only options"),
    (["-o"], "-o needs a value"),
    ("-i 'unclosed", "not valid shell words"),
])
def test_malformed_ssh_options_are_located_errors(tmp_path, options, expected):
    with pytest.raises(ManifestError) as caught:
        load_doc(tmp_path, tiny_manifest_dict(target={"name": "rpi4", "runner": "ssh://pi@pi4",
                                                      "ssh_options": options}))
    text = str(caught.value)
    assert f"line {line_of(tmp_path, 'ssh_options')}, target.ssh_options" in text and expected in text, text


def test_the_parser_reads_what_ssh_reads():
    assert local_command_options(["-i", "-oProxyCommand=x"]) == []  # the path of an identity file
    assert local_command_options(["-l", "-oLocalCommand=x"]) == []  # a login name
    assert local_command_options(["-o", "IdentityFile=-oProxyCommand=x"]) == []
    assert local_command_options(["-qCo", "ProxyCommand x"]) == ["ProxyCommand"]
    assert local_command_options(["-F", "none"]) == [] and local_command_options(["-F/dev/null"]) == []

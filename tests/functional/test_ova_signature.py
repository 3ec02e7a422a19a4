# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Signed OVAs (``.cert``), end to end.

The CA, the intermediate CA and the signers are made at test time with the
``openssl`` command, and every signature by ``openssl dgst -sign``
(:mod:`tests.lib.ovasign`); the disk is a dynamic VHD written by qemu-img,
and its truth is qemu-img's own raw conversion.  The local path goes
through the ``any2kvm`` command; the one-pass path (an OVA read as it
downloads from Glance) through ``open_image_data`` with a stand-in
download, as ``test_ova_stream`` does.
"""

import hashlib
import os
import shutil

import pytest

from any2kvm_os.containers.ova import signature
from any2kvm_os import exception
from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import glance_image
from any2kvm_os.writers import raw
from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib import ovabuild as ovat
from tests.lib import ovasign

MiB = ig.MiB


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    if shutil.which('openssl') is None:
        pytest.fail('the openssl command is needed (Debian: openssl)')
    return ovasign.make_pki(tmp_path_factory.mktemp('pki'))


@pytest.fixture(scope='module')
def disk(qemu_img, tmp_path_factory):
    d = tmp_path_factory.mktemp('sig-disk')
    return ovat.make_disk(qemu_img, d, 'disk1.vhd', 'vhd', 8 * MiB, 7)


def members_of(disk):
    files = [('file1', 'disk1.vhd', disk.path.stat().st_size)]
    disks = [('vmdisk1', 'file1', disk.size, ovat.VHD_URI)]
    return [('vm.ovf', ovat.vmware_ovf1(files, disks)),
            ('disk1.vhd', disk.data)]


def signed_ova(path, disk, signer=None, algo='SHA256', chain=(),
               layout='ovftool', cert=None, mf=True, mangle=None):
    """An OVA of ``disk``: descriptor, manifest, certificate, disk
    (``ovftool``) or descriptor, disk, manifest, certificate (``late``).
    ``cert``: the .cert bytes as given; ``mangle(mf, cert)``: returns the
    (manifest, cert) to store after signing."""
    members = members_of(disk)
    mf_data = ovat.manifest(members)
    if cert is None and signer is not None:
        cert = ovasign.sign(signer, 'vm.mf', mf_data, algo=algo, chain=chain)
    if mangle is not None:
        mf_data, cert = mangle(mf_data, cert)
    extra = []
    if mf:
        extra.append(('vm.mf', mf_data))
    if cert is not None:
        extra.append(('vm.cert', cert))
    if layout == 'ovftool':
        order = members[:1] + extra + members[1:]
    else:
        order = members + extra
    return ovat.write_ova(path, order)


def convert(ova, out, *extra):
    return cli.run_any2kvm('convert', ova, out, *[str(e) for e in extra])


def assert_converted(res, out, disk):
    assert res.returncode == 0, cli.describe(res)
    assert ig.sha256_file(out) == disk.sha256
    return res.stderr


def require(pki, ca=None):
    return ['--ova-signature-policy', 'require', '--ova-ca-file',
            ca or pki.root.cert]


def swap_lines(mf_data, cert):
    """A manifest with the same digests in another order: every digest
    still matches, only the signature can tell."""
    lines = mf_data.splitlines(True)
    return b''.join(reversed(lines)), cert


def flip_signature(mf_data, cert):
    head, rest = cert.split(b'\n', 1)
    last = head[-1:]
    head = head[:-1] + (b'0' if last != b'0' else b'1')
    return mf_data, head + b'\n' + rest


# ---------------------------------------------------------------------------
# the local path, through the command
# ---------------------------------------------------------------------------

def test_fixture_signatures_verify_with_openssl(pki, disk, tmp_path):
    members = members_of(disk)
    mf_data = ovat.manifest(members)
    cert = ovasign.sign(pki.ec_signer, 'vm.mf', mf_data, algo='SHA512',
                        chain=[pki.intermediate])
    assert ovasign.verify_with_openssl(pki.ec_signer, mf_data, cert,
                                       'SHA512', tmp_path)
    assert not ovasign.verify_with_openssl(pki.ec_signer, mf_data + b'x',
                                           cert, 'SHA512', tmp_path)


def test_trusted_signer_issued_by_the_ca(pki, disk, tmp_path):
    ova = signed_ova(tmp_path / 'a.ova', disk, pki.signer)
    out = tmp_path / 'out' / 'a.raw'
    out.parent.mkdir()
    err = assert_converted(convert(ova, out, *require(pki)), out, disk)
    assert 'WARNING' not in err, err


def test_trusted_through_an_intermediate_ec_sha512(pki, disk, tmp_path):
    ova = signed_ova(tmp_path / 'a.ova', disk, pki.ec_signer,
                     algo='SHA512', chain=[pki.intermediate])
    out = tmp_path / 'a.raw'
    assert_converted(convert(ova, out, *require(pki)), out, disk)
    info = cli.info(ova, *require(pki))
    assert info['container'] == 'ova'


def test_intermediate_missing_from_the_cert_is_not_trusted(pki, disk,
                                                           tmp_path):
    ova = signed_ova(tmp_path / 'a.ova', disk, pki.ec_signer,
                     algo='SHA512')
    out = tmp_path / 'out' / 'a.raw'
    out.parent.mkdir()
    cli.assert_refused(convert(ova, out, *require(pki)), out,
                       names=['vm.cert'], problem='not trusted.*no trusted '
                       'CA issued')
    # The default policy converts, with a warning.
    err = assert_converted(convert(ova, out, '--ova-ca-file', pki.root.cert),
                           out, disk)
    assert 'is valid, but not trusted' in err


def test_unsigned(pki, disk, tmp_path):
    ova = signed_ova(tmp_path / 'u.ova', disk)
    out = tmp_path / 'out' / 'u.raw'
    out.parent.mkdir()
    err = assert_converted(convert(ova, out), out, disk)
    assert err == '', err
    os.unlink(out)
    cli.assert_refused(convert(ova, out, *require(pki)), out,
                       names=[ova], problem='not signed')
    # The same policy from the configuration file.
    conf = tmp_path / 'a.conf'
    conf.write_text('[any2kvm]\nova_signature_policy = require\n')
    cli.assert_refused(convert(ova, out, '--config-file', conf), out,
                       names=[ova], problem='not signed')


@pytest.mark.parametrize('policy', ['warn', 'require'])
def test_manifest_tampered(pki, disk, tmp_path, policy):
    ova = signed_ova(tmp_path / 't.ova', disk, pki.signer, mangle=swap_lines)
    out = tmp_path / 'out' / 't.raw'
    out.parent.mkdir()
    cli.assert_refused(convert(ova, out, '--ova-signature-policy', policy,
                               '--ova-ca-file', pki.root.cert), out,
                       names=['vm.cert'], problem='bad signature')


def test_signature_tampered(pki, disk, tmp_path):
    ova = signed_ova(tmp_path / 't.ova', disk, pki.signer,
                     mangle=flip_signature)
    out = tmp_path / 'out' / 't.raw'
    out.parent.mkdir()
    # Refused under the default policy, without any CA.
    cli.assert_refused(convert(ova, out), out, names=['vm.cert'],
                       problem='bad signature')


def test_untrusted_ca(pki, disk, tmp_path):
    ova = signed_ova(tmp_path / 'x.ova', disk, pki.signer)
    out = tmp_path / 'out' / 'x.raw'
    out.parent.mkdir()
    cli.assert_refused(convert(ova, out, *require(pki, pki.other_root.cert)),
                       out, names=['vm.cert'], problem='not trusted')
    err = assert_converted(convert(ova, out, '--ova-ca-file',
                                   pki.other_root.cert), out, disk)
    assert 'not trusted: no trusted CA issued CN=any2kvm test signer' in err


def test_expired_signer(pki, disk, tmp_path):
    ova = signed_ova(tmp_path / 'e.ova', disk, pki.expired)
    out = tmp_path / 'out' / 'e.raw'
    out.parent.mkdir()
    cli.assert_refused(convert(ova, out, *require(pki)), out,
                       names=['vm.cert'], problem='expired on 2020-12-31')
    err = assert_converted(convert(ova, out, '--ova-ca-file', pki.root.cert),
                           out, disk)
    assert 'expired on 2020-12-31' in err


def test_missing_ca_file(pki, disk, tmp_path):
    ova = signed_ova(tmp_path / 'm.ova', disk, pki.signer)
    out = tmp_path / 'out' / 'm.raw'
    out.parent.mkdir()
    missing = tmp_path / 'no-such-ca.pem'
    cli.assert_refused(convert(ova, out, '--ova-ca-file', missing), out,
                       names=[missing], problem='CA bundle.*cannot be read')


@pytest.mark.parametrize('case,problem', [
    ('other-file', "signs 'other.mf', not the package's manifest"),
    ('no-manifest', 'signature without a manifest'),
    ('garbage', 'unreadable signature file'),
    ('no-pem', 'no PEM certificate'),
])
def test_always_refused(pki, disk, tmp_path, case, problem):
    members = members_of(disk)
    mf_data = ovat.manifest(members)
    kwargs = {}
    if case == 'other-file':
        kwargs['cert'] = ovasign.sign(pki.signer, 'other.mf', mf_data)
    elif case == 'no-manifest':
        kwargs['cert'] = ovasign.sign(pki.signer, 'vm.mf', mf_data)
        kwargs['mf'] = False
    elif case == 'garbage':
        kwargs['cert'] = b'\x00\xffnot a certificate\n'
    else:
        kwargs['cert'] = ovasign.sign(pki.signer, 'vm.mf', mf_data).split(
            b'-----BEGIN')[0]
    ova = signed_ova(tmp_path / 'r.ova', disk, **kwargs)
    out = tmp_path / 'out' / 'r.raw'
    out.parent.mkdir()
    cli.assert_refused(convert(ova, out), out, names=['vm.cert'],
                       problem=problem)


def test_extracted_directory(pki, disk, tmp_path):
    d = tmp_path / 'pkg'
    d.mkdir()
    members = members_of(disk)
    mf_data = ovat.manifest(members)
    for name, data in members:
        (d / name).write_bytes(data)
    (d / 'vm.mf').write_bytes(mf_data)
    (d / 'vm.cert').write_bytes(ovasign.sign(pki.signer, 'vm.mf', mf_data))
    out = tmp_path / 'out' / 'd.raw'
    out.parent.mkdir()
    assert_converted(convert(d / 'vm.ovf', out, *require(pki)), out, disk)
    os.unlink(out)
    (d / 'vm.mf').write_bytes(b''.join(reversed(mf_data.splitlines(True))))
    cli.assert_refused(convert(d / 'vm.ovf', out), out, names=['vm.cert'],
                       problem='bad signature')


# ---------------------------------------------------------------------------
# the one-pass path (an OVA from Glance)
# ---------------------------------------------------------------------------

class Download(object):
    """Glance's data as chunks read from a file; counts what was read."""

    def __init__(self, path, chunk=1 << 20):
        self.data = path.read_bytes()
        self.size = len(self.data)
        self.checksum = hashlib.md5(self.data).hexdigest()
        self.chunk = chunk
        self.passes = 0

    def __call__(self):
        self.passes += 1
        for pos in range(0, self.size, self.chunk):
            yield self.data[pos:pos + self.chunk]


def open_stream(path, scratch, policy):
    limits = a2k_limits.Limits(scratch_dir=str(scratch))
    limits.ova_signature = policy
    download = Download(path)
    return glance_image.open_image_data('glance image 1', download,
                                        download.size, limits,
                                        checksum=download.checksum)


@pytest.fixture
def scratch(tmp_path):
    d = tmp_path / 'scratch'
    d.mkdir()
    return d


@pytest.mark.parametrize('layout', ['ovftool', 'late'])
def test_stream_trusted(pki, disk, tmp_path, scratch, layout):
    ova = signed_ova(tmp_path / 's.ova', disk, pki.ec_signer, algo='SHA512',
                     chain=[pki.intermediate], layout=layout)
    policy = signature.Policy('require', str(pki.root.cert))
    with open_stream(ova, scratch, policy) as source:
        out = tmp_path / 's.raw'
        raw.write_file(source.disks[0], str(out))
    assert ig.sha256_file(out) == disk.sha256


def test_stream_bad_signature_early_is_refused_at_open(pki, disk, tmp_path,
                                                       scratch):
    """ovftool's layout: the certificate comes before the disk, so the
    refusal comes before any disk byte is read."""
    ova = signed_ova(tmp_path / 's.ova', disk, pki.signer,
                     mangle=swap_lines)
    with pytest.raises(exception.InvalidArchive, match='bad signature'):
        open_stream(ova, scratch, signature.Policy())
    assert os.listdir(scratch) == []


def test_stream_bad_signature_late_is_refused_before_commit(
        pki, disk, tmp_path, scratch):
    """The certificate comes after the disk: the pass ends with the
    refusal, and the writer commits nothing."""
    ova = signed_ova(tmp_path / 's.ova', disk, pki.signer,
                     mangle=flip_signature, layout='late')
    out = tmp_path / 'out' / 's.raw'
    out.parent.mkdir()
    with open_stream(ova, scratch, signature.Policy()) as source:
        with pytest.raises(exception.InvalidArchive, match='bad signature'):
            raw.write_file(source.disks[0], str(out))
    assert os.listdir(out.parent) == []


def test_stream_untrusted_and_unsigned_under_require(pki, disk, tmp_path,
                                                     scratch):
    policy = signature.Policy('require', str(pki.other_root.cert))
    ova = signed_ova(tmp_path / 's.ova', disk, pki.signer)
    with pytest.raises(exception.InvalidArchive, match='not trusted'):
        open_stream(ova, scratch, policy)
    unsigned = signed_ova(tmp_path / 'u.ova', disk)
    out = tmp_path / 'out' / 'u.raw'
    out.parent.mkdir()
    with open_stream(unsigned, scratch, policy) as source:
        with pytest.raises(exception.InvalidArchive, match='not signed'):
            raw.write_file(source.disks[0], str(out))
    assert os.listdir(out.parent) == []


def test_stream_untrusted_warns_once(pki, disk, tmp_path, scratch, caplog):
    ova = signed_ova(tmp_path / 's.ova', disk, pki.signer, layout='late')
    policy = signature.Policy('warn', str(pki.other_root.cert))
    with open_stream(ova, scratch, policy) as source:
        out = tmp_path / 's.raw'
        raw.write_file(source.disks[0], str(out))
    assert ig.sha256_file(out) == disk.sha256
    warned = [r for r in caplog.records if 'not trusted' in r.getMessage()]
    assert len(warned) == 1, caplog.text


def test_import_to_files_takes_the_options(pki, disk, tmp_path):
    """``any2kvm import`` (here to files: no cloud) honours the policy."""
    unsigned = signed_ova(tmp_path / 'u.ova', disk)
    out = tmp_path / 'out'
    out.mkdir()
    res = cli.run_any2kvm('import', unsigned, '--target', 'file', '--name',
                          'vm', '--output-dir', out, *require(pki))
    cli.assert_refused(res, names=[unsigned], problem='not signed')
    assert os.listdir(out) == []
    signed = signed_ova(tmp_path / 's.ova', disk, pki.signer)
    res = cli.run_any2kvm('import', signed, '--target', 'file', '--name',
                          'vm', '--output-dir', out, *require(pki))
    assert res.returncode == 0, cli.describe(res)
    assert ig.sha256_file(out / 'vm.raw') == disk.sha256


@pytest.mark.parametrize('what', ['missing', 'directory'])
def test_unreadable_ca_file_is_refused_whatever_the_input(disk, tmp_path,
                                                          what):
    """A CA bundle that was named but cannot be read is a mistake even
    when the input is no OVA: one line, nothing written."""
    ca = tmp_path / 'ca.pem'
    if what == 'directory':
        ca.mkdir()
    out = tmp_path / 'out.raw'
    res = convert(disk.path, out, '--ova-ca-file', ca)
    assert res.returncode == 1, cli.describe(res)
    assert res.stderr.count('\n') == 1, res.stderr
    assert '--ova-ca-file %s: the CA bundle cannot be read' % ca in res.stderr
    assert not out.exists()

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

"""The ``.cert`` parser, the chain rules and the policy, on certificates
made in memory (the end-to-end tests, with ``openssl``-made ones, are in
``tests/functional/test_ova_signature.py``)."""

import argparse
import binascii
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from oslo_config import cfg

from any2kvm_os import api
from any2kvm_os.containers.ova import signature
from any2kvm_os import exception
from any2kvm_os import limits as a2k_limits

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _cert(cn, key, issuer=None, issuer_key=None, ca=False, pathlen=None,
          before=NOW - DAY, after=NOW + DAY, key_usage=True):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(before).not_valid_after(after))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen),
                            critical=True)
    if key_usage:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    return b.sign(issuer_key or key, hashes.SHA256())


def _key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope='module')
def pki():
    class P(object):
        pass
    p = P()
    p.root_key = _key()
    p.root = _cert('root', p.root_key, ca=True)
    p.inter_key = _key()
    p.inter = _cert('inter', p.inter_key, p.root, p.root_key, ca=True,
                    pathlen=0)
    p.leaf_key = _key()
    p.leaf = _cert('leaf', p.leaf_key, p.inter, p.inter_key)
    return p


def _pem(*certs):
    return b''.join(c.public_bytes(serialization.Encoding.PEM)
                    for c in certs)


def _cert_file(key, certs, data, name='vm.mf', algo='SHA256'):
    sig = key.sign(data, ec.ECDSA(getattr(hashes, algo)()))
    return ('%s(%s)= %s\n' % (algo, name, binascii.hexlify(sig).decode())
            ).encode() + _pem(*certs)


def test_parse(pki):
    data = _cert_file(pki.leaf_key, [pki.leaf, pki.inter], b'mf')
    cert = signature.parse(data, 'x.cert')
    assert (cert.algo, cert.signed) == ('SHA256', 'vm.mf')
    assert [c.subject for c in cert.certificates] == [pki.leaf.subject,
                                                      pki.inter.subject]


@pytest.mark.parametrize('data,problem', [
    (b'', 'first line'),
    (b'MD5(vm.mf)= 00\n', 'first line'),
    (b'SHA256(vm.mf)= 000\n-----BEGIN CERTIFICATE-----\n', 'odd number'),
    (b'SHA256(vm.mf)= 00\n', 'no PEM certificate'),
    (b'SHA256(vm.mf)= 00\n-----BEGIN CERTIFICATE-----\nAAAA\n'
     b'-----END CERTIFICATE-----\n', 'bad PEM'),
    (b'\xff\xfe', 'not ASCII'),
    (b'x' * (signature.MAX_CERT_BYTES + 1), 'more than'),
])
def test_parse_refusals(data, problem):
    with pytest.raises(exception.InvalidArchive) as e:
        signature.parse(data, 'x.cert')
    line = str(e.value)
    assert line.startswith('x.cert: unreadable signature file')
    assert problem in line
    assert '\n' not in line


def test_chain_rules(pki):
    assert signature.chain_problem([pki.leaf, pki.inter], [pki.root]) is None
    assert 'no trusted CA issued CN=leaf' in signature.chain_problem(
        [pki.leaf], [pki.root])
    # The anchor itself may be the signer's issuer, or the signer.
    direct = _cert('direct', _key(), pki.root, pki.root_key)
    assert signature.chain_problem([direct], [pki.root]) is None
    selfsigned = _cert('self', _key(), ca=False)
    assert signature.chain_problem([selfsigned], [selfsigned]) is None
    # A CA certificate does not sign packages (keyUsage).
    assert 'CN=inter may not sign' in signature.chain_problem(
        [pki.inter], [pki.root])
    # An intermediate that is not a CA.
    k = _key()
    not_ca = _cert('notca', k, pki.root, pki.root_key, ca=False)
    leaf = _cert('leaf2', _key(), not_ca, k)
    assert 'not a CA' in signature.chain_problem([leaf, not_ca], [pki.root])
    # pathlen 0 below the intermediate.
    k2 = _key()
    sub = _cert('sub', k2, pki.inter, pki.inter_key, ca=True)
    leaf3 = _cert('leaf3', _key(), sub, k2)
    assert 'allows 0 CA(s) below it' in signature.chain_problem(
        [leaf3, sub, pki.inter], [pki.root])
    # Dates.
    old = _cert('old', _key(), pki.inter, pki.inter_key,
                before=NOW - 3 * DAY, after=NOW - 2 * DAY)
    assert 'CN=old expired on' in signature.chain_problem(
        [old, pki.inter], [pki.root])
    young = _cert('young', _key(), pki.inter, pki.inter_key,
                  before=NOW + DAY, after=NOW + 2 * DAY)
    assert 'not valid before' in signature.chain_problem(
        [young, pki.inter], [pki.root])
    # A name match whose signature does not: not its issuer.
    impostor_key = _key()
    impostor = _cert('inter', impostor_key, pki.root, _key(), ca=True)
    assert 'no trusted CA' in signature.chain_problem(
        [pki.leaf, impostor], [pki.root])


def test_check_verifies_and_refuses(pki, tmp_path):
    ca = tmp_path / 'ca.pem'
    ca.write_bytes(_pem(pki.root))
    policy = signature.Policy('require', str(ca))
    mf = b'SHA256(vm.ovf)= ' + b'0' * 64 + b'\n'
    good = _cert_file(pki.leaf_key, [pki.leaf, pki.inter], mf,
                      algo='SHA512')
    assert signature.check('p', 'p:vm.cert', good, 'vm.mf', mf,
                           policy) == []
    with pytest.raises(exception.InvalidArchive, match='bad signature'):
        signature.check('p', 'p:vm.cert', good, 'vm.mf', mf + b'\n',
                        policy)
    with pytest.raises(exception.InvalidArchive,
                       match="signs 'vm.mf', not the package's manifest "
                             "'other.mf'"):
        signature.check('p', 'p:vm.cert', good, 'other.mf', mf, policy)
    with pytest.raises(exception.InvalidArchive, match='without a manifest'):
        signature.check('p', 'p:vm.cert', good, None, None, policy)
    # Trust: refused under require, a warning under warn.
    short = _cert_file(pki.leaf_key, [pki.leaf], mf)
    with pytest.raises(exception.InvalidArchive, match='not trusted'):
        signature.check('p', 'p:vm.cert', short, 'vm.mf', mf, policy)
    notes = signature.check('p', 'p:vm.cert', short, 'vm.mf', mf,
                            signature.Policy('warn', str(ca)))
    assert len(notes) == 1 and 'valid, but not trusted' in notes[0]


def test_ca_file_errors(tmp_path):
    with pytest.raises(exception.InvalidArchive, match='cannot be read'):
        signature.load_anchors(str(tmp_path / 'missing.pem'))
    (tmp_path / 'junk.pem').write_bytes(b'junk')
    with pytest.raises(exception.InvalidArchive, match='no readable PEM'):
        signature.load_anchors(str(tmp_path / 'junk.pem'))
    # The system bundle: whatever it holds, never an error.
    assert isinstance(signature.load_anchors(None), list)


def test_unsigned_policy():
    signature.check_unsigned('p', signature.Policy())
    with pytest.raises(exception.InvalidArchive, match='p: not signed'):
        signature.check_unsigned('p', signature.Policy('require'))


def test_policy_from_conf_and_arguments(tmp_path):
    assert signature.policy_of(a2k_limits.Limits()).policy == 'warn'
    conf = cfg.ConfigOpts()
    api.register_opts(conf)
    f = tmp_path / 'a.conf'
    f.write_text('[any2kvm]\nova_signature_policy = require\n'
                 'ova_ca_file = /x/ca.pem\n')
    conf(args=[], default_config_files=[str(f)])
    limits = a2k_limits.Limits.from_conf(conf)
    p = signature.policy_of(limits)
    assert (p.policy, p.ca_file) == ('require', '/x/ca.pem')
    parser = argparse.ArgumentParser()
    signature.add_arguments(parser)
    signature.apply_arguments(parser.parse_args([]), limits)
    assert signature.policy_of(limits).policy == 'require'
    signature.apply_arguments(parser.parse_args(
        ['--ova-signature-policy', 'warn']), limits)
    p = signature.policy_of(limits)
    assert (p.policy, p.ca_file) == ('warn', '/x/ca.pem')
    with pytest.raises(SystemExit):
        parser.parse_args(['--ova-signature-policy', 'maybe'])

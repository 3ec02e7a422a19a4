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

"""A small PKI made at test time with the ``openssl`` command, and OVF
package signatures made by ``openssl dgst -sign`` (not by the library the
code under test verifies with).

:func:`make_pki` writes, in a directory: a root CA (RSA), an intermediate
CA (EC P-256, pathlen 0) issued by it, a signer (RSA) issued by the root,
a signer (EC P-384) issued by the intermediate, an expired signer (RSA,
valid in 2020 only, issued by the root through ``openssl ca``), and a
second, unrelated root CA.
"""

import binascii
import subprocess
from pathlib import Path

TIMEOUT = 120

CA_EXT = ('basicConstraints=critical,CA:TRUE%s\n'
          'keyUsage=critical,keyCertSign,cRLSign\n'
          'subjectKeyIdentifier=hash\n'
          'authorityKeyIdentifier=keyid\n')
LEAF_EXT = ('basicConstraints=critical,CA:FALSE\n'
            'keyUsage=critical,digitalSignature\n'
            'extendedKeyUsage=codeSigning\n'
            'subjectKeyIdentifier=hash\n'
            'authorityKeyIdentifier=keyid\n')


def openssl(*args, cwd=None, data=None):
    res = subprocess.run(['openssl'] + [str(a) for a in args], cwd=cwd,
                         input=data, capture_output=True, timeout=TIMEOUT)
    if res.returncode != 0:
        raise AssertionError('openssl %s failed: %s' % (
            ' '.join(str(a) for a in args), res.stderr.decode(
                'utf-8', 'replace')))
    return res.stdout


class Party(object):
    """A key and its certificate (paths)."""

    def __init__(self, key, cert):
        self.key = Path(key)
        self.cert = Path(cert)

    @property
    def pem(self):
        return self.cert.read_bytes()


def _key(d, name, kind):
    key = d / (name + '.key')
    if kind == 'rsa':
        openssl('genpkey', '-algorithm', 'RSA', '-pkeyopt',
                'rsa_keygen_bits:2048', '-out', key)
    else:
        openssl('genpkey', '-algorithm', 'EC', '-pkeyopt',
                'ec_paramgen_curve:%s' % kind, '-out', key)
    return key


def _root(d, name, cn):
    key = _key(d, name, 'rsa')
    cert = d / (name + '.pem')
    openssl('req', '-x509', '-new', '-key', key, '-subj', '/CN=%s' % cn,
            '-days', '30', '-sha256', '-config', _req_conf(d),
            '-extensions', 'v3', '-out', cert,
            '-addext', 'basicConstraints=critical,CA:TRUE',
            '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
    return Party(key, cert)


def _req_conf(d):
    conf = d / 'req.cnf'
    if not conf.exists():
        conf.write_text('[req]\ndistinguished_name=dn\n[dn]\n[v3]\n'
                        'subjectKeyIdentifier=hash\n')
    return conf


def _issue(d, issuer, name, cn, kind, ext_text, serial):
    key = _key(d, name, kind)
    csr = d / (name + '.csr')
    openssl('req', '-new', '-key', key, '-subj', '/CN=%s' % cn,
            '-config', _req_conf(d), '-out', csr)
    ext = d / (name + '.ext')
    ext.write_text('[v3]\n' + ext_text)
    cert = d / (name + '.pem')
    openssl('x509', '-req', '-in', csr, '-CA', issuer.cert, '-CAkey',
            issuer.key, '-set_serial', str(serial), '-days', '30',
            '-sha256', '-extfile', ext, '-extensions', 'v3', '-out', cert)
    return Party(key, cert)


def _expired(d, issuer, name, cn):
    """A certificate valid in 2020 only: ``openssl ca`` sets the dates."""
    key = _key(d, name, 'rsa')
    csr = d / (name + '.csr')
    openssl('req', '-new', '-key', key, '-subj', '/CN=%s' % cn,
            '-config', _req_conf(d), '-out', csr)
    ca_dir = d / (name + '-ca')
    ca_dir.mkdir()
    (ca_dir / 'index.txt').write_text('')
    (ca_dir / 'serial').write_text('1000\n')
    conf = ca_dir / 'ca.cnf'
    conf.write_text(
        '[ca]\ndefault_ca=test\n[test]\ndir=%s\ndatabase=$dir/index.txt\n'
        'new_certs_dir=$dir\nserial=$dir/serial\ndefault_md=sha256\n'
        'policy=any\nunique_subject=no\ncopy_extensions=none\n'
        'x509_extensions=v3\n[any]\ncommonName=supplied\n[v3]\n%s'
        % (ca_dir, LEAF_EXT))
    cert = d / (name + '.pem')
    openssl('ca', '-batch', '-config', conf, '-cert', issuer.cert,
            '-keyfile', issuer.key, '-in', csr, '-out', cert, '-notext',
            '-startdate', '20200101000000Z', '-enddate', '20201231000000Z')
    return Party(key, cert)


class Pki(object):
    pass


def make_pki(directory):
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pki = Pki()
    pki.dir = d
    pki.root = _root(d, 'root', 'any2kvm test root CA')
    pki.other_root = _root(d, 'other', 'any2kvm unrelated CA')
    pki.intermediate = _issue(d, pki.root, 'inter', 'any2kvm test '
                              'intermediate CA', 'P-256',
                              CA_EXT % ',pathlen:0', 2)
    pki.signer = _issue(d, pki.root, 'signer', 'any2kvm test signer',
                        'rsa', LEAF_EXT, 3)
    pki.ec_signer = _issue(d, pki.intermediate, 'ecsigner', 'any2kvm EC '
                           'signer', 'P-384', LEAF_EXT, 4)
    pki.expired = _expired(d, pki.root, 'expired', 'any2kvm expired signer')
    return pki


def sign(signer, mf_name, mf_data, algo='SHA256', chain=(), workdir=None):
    """The bytes of a ``.cert`` for the manifest ``mf_data``: the line
    ``ALGO(mf_name)= hex`` from ``openssl dgst -ALGO -sign``, the signer's
    certificate, then those of ``chain``."""
    sig = openssl('dgst', '-' + algo.lower(), '-sign', signer.key,
                  data=mf_data)
    head = '%s(%s)= %s\n' % (algo, mf_name,
                             binascii.hexlify(sig).decode())
    return head.encode() + signer.pem + b''.join(p.pem for p in chain)


def verify_with_openssl(signer, mf_data, cert_data, algo='SHA256',
                        workdir=None):
    """Whether ``openssl dgst -verify`` accepts the signature of
    ``cert_data`` over ``mf_data`` (a sanity check of the fixtures)."""
    workdir = Path(workdir)
    line = cert_data.split(b'\n', 1)[0].decode()
    sig = binascii.unhexlify(line.split('= ', 1)[1].strip())
    (workdir / 'sig.bin').write_bytes(sig)
    (workdir / 'pub.pem').write_bytes(openssl('x509', '-in', signer.cert,
                                              '-pubkey', '-noout'))
    res = subprocess.run(['openssl', 'dgst', '-' + algo.lower(), '-verify',
                          str(workdir / 'pub.pem'), '-signature',
                          str(workdir / 'sig.bin')], input=mf_data,
                         capture_output=True, timeout=TIMEOUT)
    return res.returncode == 0

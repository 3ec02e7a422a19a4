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

"""OVF package signatures: the ``.cert`` file of an OVA or OVF directory.

A ``.cert`` (DSP0243, 5.4) holds one line naming the manifest it signs and
the signature, hex-encoded, then the signer's X.509 certificate in PEM,
optionally followed by intermediate CA certificates::

    SHA256(vm.mf)= 3f1c...
    -----BEGIN CERTIFICATE-----
    ...

The signature is the one ``openssl dgst -sha256 -sign KEY vm.mf`` writes:
PKCS#1 v1.5 for an RSA key, ECDSA (DER) for an EC key, over the bytes of
the manifest with the named digest (SHA1, SHA224, SHA256, SHA384 or
SHA512).  The manifest's own digests of every file are checked elsewhere
(:mod:`.package`, :mod:`.stream`): a valid signature over a verified
manifest covers the whole package.

:func:`check` verifies, with the ``cryptography`` library:

* the signature, with the public key of the first certificate (the
  signer).  A bad signature, a ``.cert`` that cannot be parsed, one that
  signs another file than the package's manifest, and a ``.cert`` in a
  package without a manifest are always refused;
* the chain: from the signer through the ``.cert``'s other certificates
  to a CA of the bundle ``ova_ca_file`` (default: the system's bundle).
  Each link is checked by its signature and names, each certificate by its
  validity dates (now), each issuer by its basicConstraints (CA) and key
  usage (keyCertSign) when present.  Revocation (CRL, OCSP) is not checked.
  A chain that does not reach a trusted CA is a warning with
  ``ova_signature_policy = warn`` (the default) and a refusal with
  ``require``, which also refuses an unsigned package.

A ``ova_ca_file`` that cannot be read is always refused: the operator
asked for it.
"""

import binascii
import datetime
import logging
import re
import warnings

from any2kvm_os import exception
from any2kvm_os import lazyopts

LOG = logging.getLogger(__name__)

GROUP = 'any2kvm'
WARN = 'warn'
REQUIRE = 'require'
POLICIES = (WARN, REQUIRE)
#: The largest .cert accepted (a few certificates).
MAX_CERT_BYTES = 1 << 20
#: Most certificates a chain may have, the signer included.
MAX_CHAIN = 10

#: The options' defaults, written once.
_DEFAULTS = {'ova_signature_policy': WARN, 'ova_ca_file': None}


def _options():
    from oslo_config import cfg
    return [
        cfg.StrOpt('ova_signature_policy',
                   default=_DEFAULTS['ova_signature_policy'],
                   choices=POLICIES,
                   help='What an OVA or OVF package signature (its .cert) '
                        'must prove. warn: a valid signature whose '
                        'certificate does not chain to a trusted CA, and '
                        'an unsigned package, are accepted (the first with '
                        'a warning); require: both are refused. A bad '
                        'signature is always refused.'),
        cfg.StrOpt('ova_ca_file', default=_DEFAULTS['ova_ca_file'],
                   help='PEM bundle of the CA certificates trusted to sign '
                        'OVA and OVF packages (default: the system\'s CA '
                        'bundle).'),
    ]


#: ``OPTIONS`` (oslo.config options), made on first use: a conversion
#: that reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)


_LINE = re.compile(r'^\s*(SHA1|SHA224|SHA256|SHA384|SHA512)\s*\((.+)\)\s*='
                   r'\s*([0-9A-Fa-f]+)\s*$')


class Policy(object):
    """``policy`` (warn or require) and ``ca_file`` (None: the system
    bundle)."""

    def __init__(self, policy=_DEFAULTS['ova_signature_policy'],
                 ca_file=_DEFAULTS['ova_ca_file']):
        if policy not in POLICIES:
            raise ValueError('invalid signature policy %r' % (policy,))
        self.policy = policy
        self.ca_file = ca_file

    @property
    def required(self):
        return self.policy == REQUIRE


def policy_of(limits):
    """The :class:`Policy` of a conversion: the command line's (set by
    :func:`apply_arguments`), else the configuration's, else the
    defaults."""
    chosen = getattr(limits, 'ova_signature', None)
    if chosen is not None:
        return chosen
    conf = getattr(limits, 'conf', None)
    if conf is not None:
        from oslo_config import cfg  # a conf: oslo.config is loaded
        try:
            g = conf[GROUP]
            return Policy(g.ova_signature_policy, g.ova_ca_file)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            pass
    return Policy()


def add_arguments(parser):
    """``--ova-signature-policy`` and ``--ova-ca-file``."""
    parser.add_argument('--ova-signature-policy', choices=POLICIES,
                        default=None,
                        help='warn (default): accept an unsigned OVA and a '
                             'signature not chained to a trusted CA, with '
                             'a warning; require: refuse them. A bad '
                             'signature is always refused '
                             '(ova_signature_policy)')
    parser.add_argument('--ova-ca-file', metavar='PEM', default=None,
                        help='CA certificates trusted to sign OVA/OVF '
                             'packages (ova_ca_file; default: the '
                             'system\'s bundle)')


def apply_arguments(args, limits):
    """Let the command line's options (when given) win over the
    configuration's for this conversion."""
    policy = getattr(args, 'ova_signature_policy', None)
    ca_file = getattr(args, 'ova_ca_file', None)
    if policy is None and ca_file is None:
        return
    if ca_file is not None:
        # Refused whatever the input: a bundle that was named but cannot
        # be read is a mistake even when no OVA is converted.
        try:
            with open(ca_file, 'rb'):
                pass
        except OSError as e:
            raise exception.Any2KvmError(
                '--ova-ca-file %s: the CA bundle cannot be read: %s' % (
                    ca_file, e.strerror))
    base = policy_of(limits)
    limits.ova_signature = Policy(policy or base.policy,
                                  ca_file or base.ca_file)


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------

class Cert(object):
    """A parsed ``.cert``: ``algo`` and ``signed`` (the file name) of its
    first line, the ``signature`` bytes, and its ``certificates``
    (x509.Certificate, the signer first)."""

    def __init__(self, algo, signed, signature, certificates):
        self.algo = algo
        self.signed = signed
        self.signature = signature
        self.certificates = certificates


def parse(data, name):
    """Parse the ``.cert`` bytes ``data`` (shown as ``name``)."""
    from cryptography import x509

    def bad(reason):
        return exception.InvalidArchive(
            path=name, reason='unreadable signature file: %s' % reason)

    if len(data) > MAX_CERT_BYTES:
        raise bad('%d bytes, more than %d' % (len(data), MAX_CERT_BYTES))
    try:
        text = data.decode('ascii')
    except UnicodeDecodeError:
        raise bad('not ASCII text')
    line = None
    for raw in text.splitlines():
        if raw.strip():
            line = raw
            break
    m = _LINE.match(line or '')
    if m is None:
        raise bad('its first line is not "SHA256(name.mf)= hex signature"')
    algo, signed, hexsig = m.groups()
    if len(hexsig) % 2:
        raise bad('the signature has an odd number of hex digits')
    signature = binascii.unhexlify(hexsig)
    if '-----BEGIN CERTIFICATE-----' not in text:
        raise bad('no PEM certificate')
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise bad('bad PEM certificate (%s)' % (str(e).splitlines()[0]
                                                if str(e) else 'unreadable'))
    if len(certs) > MAX_CHAIN:
        raise bad('%d certificates, more than %d' % (len(certs), MAX_CHAIN))
    return Cert(algo, signed.strip(), signature, certs)


def _hash(algo):
    from cryptography.hazmat.primitives import hashes
    return {'SHA1': hashes.SHA1, 'SHA224': hashes.SHA224,
            'SHA256': hashes.SHA256, 'SHA384': hashes.SHA384,
            'SHA512': hashes.SHA512}[algo]()


def _verify_signature(cert, data, name):
    """Raise unless ``cert.signature`` is the signer's over ``data``."""
    from cryptography import exceptions
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = cert.certificates[0].public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, data, padding.PKCS1v15(),
                       _hash(cert.algo))
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, data, ec.ECDSA(_hash(cert.algo)))
        else:
            raise exception.InvalidArchive(
                path=name, reason='the signer\'s key is a %s key: only RSA '
                'and EC keys sign OVF packages' % type(key).__name__)
    except exceptions.InvalidSignature:
        raise exception.InvalidArchive(
            path=name, reason='bad signature: the manifest %s was not '
            'signed by %s (altered manifest or signature)'
            % (cert.signed, _subject(cert.certificates[0])))


# ---------------------------------------------------------------------------
# the chain
# ---------------------------------------------------------------------------

def _subject(c):
    return c.subject.rfc4514_string() or '(empty subject)'


def _fingerprint(c):
    from cryptography.hazmat.primitives import hashes
    return c.fingerprint(hashes.SHA256())


def _issued_by(child, issuer):
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except Exception:
        # InvalidSignature, or an issuer key of another kind (TypeError,
        # ValueError, UnsupportedAlgorithm).
        return False
    return True


def _ext(c, oid_cls):
    from cryptography import x509
    try:
        return c.extensions.get_extension_for_class(oid_cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        return None


def _dates_problem(c, now):
    if now < c.not_valid_before_utc:
        return 'the certificate %s is not valid before %s' % (
            _subject(c), c.not_valid_before_utc.strftime('%Y-%m-%d %H:%M'))
    if now > c.not_valid_after_utc:
        return 'the certificate %s expired on %s' % (
            _subject(c), c.not_valid_after_utc.strftime('%Y-%m-%d %H:%M'))
    return None


def _ca_problem(c, below):
    """Why ``c`` may not issue a chain of ``below`` CA certificates."""
    from cryptography import x509
    bc = _ext(c, x509.BasicConstraints)
    if bc is None or not bc.ca:
        return 'the certificate %s is not a CA (basicConstraints)' % (
            _subject(c))
    if bc.path_length is not None and below > bc.path_length:
        return 'the CA %s allows %d CA(s) below it, the chain has %d' % (
            _subject(c), bc.path_length, below)
    ku = _ext(c, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        return 'the CA %s may not sign certificates (keyUsage)' % (
            _subject(c))
    return None


def chain_problem(certificates, anchors, now=None):
    """Why the signer (``certificates[0]``) is not trusted through the
    other ``certificates`` to one of ``anchors``, or None when it is."""
    from cryptography import x509
    now = now or datetime.datetime.now(datetime.timezone.utc)
    signer = certificates[0]
    ku = _ext(signer, x509.KeyUsage)
    if ku is not None and not ku.digital_signature:
        return 'the signer %s may not sign (keyUsage)' % _subject(signer)
    trusted = {_fingerprint(a): a for a in anchors}
    pool = list(certificates[1:])
    chain = [signer]
    while len(chain) <= MAX_CHAIN:
        cur = chain[-1]
        problem = _dates_problem(cur, now)
        if problem:
            return problem
        if len(chain) > 1:
            problem = _ca_problem(cur, len(chain) - 2)
            if problem:
                return problem
        if _fingerprint(cur) in trusted:
            return None
        for anchor in anchors:
            if _issued_by(cur, anchor):
                problem = (_dates_problem(anchor, now) or
                           _ca_problem(anchor, len(chain) - 1))
                if problem is None:
                    return None
        nxt = next((c for c in pool if _issued_by(cur, c) and
                    all(_fingerprint(c) != _fingerprint(d) for d in chain)),
                   None)
        if nxt is None:
            return 'no trusted CA issued %s (issuer %s)' % (
                _subject(cur), cur.issuer.rfc4514_string())
        chain.append(nxt)
    return 'the chain is longer than %d certificates' % MAX_CHAIN


def load_anchors(ca_file):
    """The CA certificates of ``ca_file`` (None: the system bundle, which
    may be absent: then none)."""
    from cryptography import x509
    if ca_file is None:
        # ssl is imported here only: every command imports this module
        # (its options), and ssl costs start-up time.
        import ssl
        paths = ssl.get_default_verify_paths()
        ca_file = paths.cafile or paths.openssl_cafile
        try:
            with open(ca_file, 'rb') as f, warnings.catch_warnings():
                # Some system CAs have serial numbers RFC 5280 disallows.
                warnings.simplefilter('ignore')
                return x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError, TypeError):
            return []
    try:
        with open(ca_file, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise exception.InvalidArchive(
            path=ca_file, reason='the CA bundle (ova_ca_file) cannot be '
            'read: %s' % e.strerror)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise exception.InvalidArchive(
            path=ca_file, reason='the CA bundle (ova_ca_file) holds no '
            'readable PEM certificate')


# ---------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------

def check(path, cert_name, cert_data, mf_name, mf_data, policy):
    """Verify a package's ``.cert`` (``cert_data``, shown as
    ``cert_name``) against its manifest (``mf_name``, the name as the
    ``.cert`` gives it, and ``mf_data``; None when the package has none).
    Raise when refused; return the warnings to show when it is usable."""
    if mf_name is None:
        raise exception.InvalidArchive(
            path=cert_name, reason='a signature without a manifest: what it '
            'signs is missing, refused')
    cert = parse(cert_data, cert_name)
    if cert.signed != mf_name:
        raise exception.InvalidArchive(
            path=cert_name, reason='signs %r, not the package\'s manifest '
            '%r: refused' % (cert.signed, mf_name))
    _verify_signature(cert, mf_data, cert_name)
    anchors = load_anchors(policy.ca_file)
    problem = chain_problem(cert.certificates, anchors)
    signer = _subject(cert.certificates[0])
    if problem is None:
        LOG.info('%s: signed by %s (%s), trusted', path, signer, cert.algo)
        return []
    if policy.required:
        raise exception.InvalidArchive(
            path=cert_name, reason='the signature is valid but not trusted '
            '(ova_signature_policy = require): %s' % problem)
    return ['%s: the signature of %s by %s is valid, but not trusted: %s'
            % (path, mf_name, signer, problem)]


def check_unsigned(path, policy):
    """A package without ``.cert``: refused when signatures are
    required."""
    if policy.required:
        raise exception.InvalidArchive(
            path=path, reason='not signed (no .cert), and '
            'ova_signature_policy = require')
    LOG.info('%s: not signed (no .cert)', path)

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

"""The OpenStack clients and their errors, for sources and targets alike.

The client libraries are imported when a client is made, so that local
commands never load them.
"""

from any2kvm_os import exception


def glance_client(session, region_name=None, interface=None):
    from glanceclient import client
    kw = {}
    if region_name:
        kw['region_name'] = region_name
    if interface:
        kw['interface'] = interface
    return client.Client('2', session=session, **kw)


def cloud_error(what, e):
    """A one-line error from a keystoneauth/glanceclient failure."""
    from keystoneauth1 import exceptions as ks_exc
    if isinstance(e, ks_exc.Unauthorized):
        return exception.TargetError(
            path=what, reason='authentication failed (check the user, '
            'password and project: %s)' % e)
    if isinstance(e, ks_exc.ConnectFailure):
        return exception.TargetError(path=what,
                                     reason='cannot connect: %s' % e)
    text = ' '.join(str(e).split())
    return exception.TargetError(path=what, reason='%s: %s' % (
        type(e).__name__, text[:500]))


#: HTTP answers that say "not now" rather than "no": a request timed out,
#: too many requests, the service or its gateway unavailable.
TRANSIENT_CODES = frozenset((408, 429, 500, 502, 503, 504))


def http_code(e):
    """The HTTP status of a client's error (novaclient's and
    cinderclient's ``code``, keystoneauth's ``http_status``), or None."""
    for attr in ('code', 'http_status'):
        code = getattr(e, attr, None)
        if isinstance(code, int):
            return code
    return None


def not_found(e):
    """Whether ``e`` (a client's error) is the service's 404: what was
    looked for, or asked to be deleted, is not there."""
    return isinstance(e, Exception) and (
        http_code(e) == 404 or type(e).__name__ == 'NotFound')


def transient(e):
    """Whether ``e`` (a client's error) may go away if asked again: a
    connection that failed or timed out, or an HTTP answer of
    :data:`TRANSIENT_CODES`."""
    if not isinstance(e, Exception):
        return False
    code = http_code(e)
    if code is not None:
        return code in TRANSIENT_CODES
    try:
        from keystoneauth1 import exceptions as ks_exc
    except ImportError:
        return False
    return isinstance(e, ks_exc.RetriableConnectionFailure)


def cinder_client(session, region_name=None, interface=None,
                  version='3'):
    from cinderclient import client
    kw = {}
    if region_name:
        kw['region_name'] = region_name
    if interface:
        kw['interface'] = interface
    return client.Client(version, session=session, **kw)

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

"""A Windows guest's static IPv4 settings: Windows binds them to the
network adapter (its NetCfgInstanceId), so the new NIC on KVM starts on
DHCP.  The probe's helpers that read them from the SYSTEM hive's values
(untrusted: anything may be there)."""

import pytest

from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe


@pytest.mark.parametrize('mask,prefix', [
    ('255.255.255.0', 24), ('255.255.255.128', 25), ('255.0.0.0', 8),
    ('255.255.255.255', 32), ('0.0.0.0', 0), ('128.0.0.0', 1),
    ('255.0.255.0', None), ('0.255.255.255', None), ('255.255.255.1', None),
    ('255.255.255', None), ('255.255.255.256', None), ('', None),
    ('abc', None), (None, None), (24, None)])
def test_mask_prefix(mask, prefix):
    assert probe.mask_prefix(mask) == prefix


@pytest.mark.parametrize('address,shown', [
    ('192.0.2.5/24', ('192.0.2.5', '255.255.255.0')),
    ('192.0.2.5/255.255.0.0', ('192.0.2.5', '255.255.0.0')),
    ('192.0.2.5', ('192.0.2.5', '<mask>')),
    ('192.0.2.5/33', ('192.0.2.5', '33')),
    ('192.0.2.5/\u00b2', ('192.0.2.5', '\u00b2')),
    ('192.0.2.5/' + '9' * 5000, ('192.0.2.5', '9' * 5000))])
def test_a_reported_address_and_its_mask(address, shown):
    """What only looks like a prefix length is shown as it is."""
    assert gi._address_mask(address) == shown


@pytest.mark.parametrize('value,servers', [
    ('192.0.2.53,192.0.2.54', ['192.0.2.53', '192.0.2.54']),
    ('192.0.2.53 192.0.2.54', ['192.0.2.53', '192.0.2.54']),
    (' 192.0.2.53 ,  192.0.2.54\t', ['192.0.2.53', '192.0.2.54']),
    ('', []), ('0.0.0.0', []),
    ('192.0.2.53,dns.example,192.0.2.53', ['192.0.2.53']),
    (['192.0.2.1', '0.0.0.0', '192.0.2.2'], ['192.0.2.1', '192.0.2.2']),
    (7, []), (None, []), ('deadbeef', [])])
def test_split_servers(value, servers):
    assert probe.split_servers(value) == servers


def test_split_servers_is_bounded():
    many = ','.join('192.0.2.%d' % i for i in range(1, 200))
    assert probe.split_servers(many) == [
        '192.0.2.%d' % i for i in range(1, probe.MAX_NET_ENTRIES + 1)]


def test_static_addresses():
    assert probe.static_addresses(
        ['192.0.2.5', '198.51.100.7'], ['255.255.255.0', '255.255.255.128']
    ) == ['192.0.2.5/24', '198.51.100.7/25']
    # A non-contiguous mask is kept as it is; an address without a mask
    # (fewer masks than addresses), or with 0.0.0.0, stands alone.
    assert probe.static_addresses(
        ['203.0.113.9', '203.0.113.10', '203.0.113.11', '0.0.0.0'],
        ['255.0.255.0', '0.0.0.0']) == [
        '203.0.113.9/255.0.255.0', '203.0.113.10', '203.0.113.11']
    # Windows 2000 documents them as space-separated REG_SZ values.
    assert probe.static_addresses('192.0.2.5 192.0.2.6',
                                  '255.255.255.0 255.255.0.0') == [
        '192.0.2.5/24', '192.0.2.6/16']
    assert probe.static_addresses(['not-an-address'], ['255.0.0.0']) == []
    assert probe.static_addresses('0a0b', 5) == []
    assert len(probe.static_addresses(
        ['10.0.0.%d' % i for i in range(1, 50)], [])) == \
        probe.MAX_NET_ENTRIES


def test_names_from_the_hive_are_bounded_and_one_line():
    assert probe._net_text('Ethernet\r\n2\x00') == 'Ethernet??2?'
    assert len(probe._net_text('x' * 10000)) == probe.MAX_NET_TEXT
    assert probe._net_text(['a']) is None


def test_netsh_commands():
    entry = {'addresses': ['192.0.2.5/24', '198.51.100.7/255.0.255.0',
                           '203.0.113.10'],
             'gateways': ['192.0.2.1', '192.0.2.2'],
             'dns': ['192.0.2.53', '192.0.2.54', '192.0.2.55']}
    assert gi.netsh_commands(entry, 'Ethernet 3') == [
        'netsh interface ipv4 set address name="Ethernet 3" static '
        '192.0.2.5 255.255.255.0 192.0.2.1',
        'netsh interface ipv4 add address name="Ethernet 3" 198.51.100.7 '
        '255.0.255.0',
        'netsh interface ipv4 add address name="Ethernet 3" 203.0.113.10 '
        '<mask>',
        'netsh interface ipv4 set dnsservers name="Ethernet 3" static '
        '192.0.2.53 primary',
        'netsh interface ipv4 add dnsservers name="Ethernet 3" 192.0.2.54 '
        'index=2',
        'netsh interface ipv4 add dnsservers name="Ethernet 3" 192.0.2.55 '
        'index=3']
    assert gi.netsh_commands({'addresses': ['10.0.0.5/8']}) == [
        'netsh interface ipv4 set address name="<new adapter>" static '
        '10.0.0.5 255.0.0.0']
    assert gi.netsh_commands({}) == []


def win(network, current='ControlSet001'):
    return {'current_control_set': current, 'control_sets': {
        'ControlSet001': {'network': network},
        'ControlSet002': {'network': [{'guid': '{OLD}', 'dhcp': False,
                                       'addresses': ['192.0.2.9/24']}]}}}


def test_only_the_current_control_set_is_warned_about():
    assert gi.windows_network_warnings(win([])) == []
    warned = gi.windows_network_warnings(win([], 'ControlSet002'))
    assert len(warned) == 1 and 'the interface {OLD}' in warned[0] and \
        '192.0.2.9/24' in warned[0]
    assert gi.windows_network_warnings({}) == []


def test_a_dhcp_interface_without_static_dns_is_not_warned_about():
    assert gi.windows_network_warnings(win([
        {'guid': '{G}', 'dhcp': True, 'addresses': [], 'dns': []}])) == []

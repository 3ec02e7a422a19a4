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

"""What the any2kvm OSC commands share."""

import contextlib

from cliff import columns
from osc_lib.cli import format_columns
from osc_lib import exceptions


def add_config_file(parser):
    parser.add_argument('--config-file', action='append', default=[],
                        metavar='PATH',
                        help='oslo.config file with an [any2kvm] section '
                             '(limits, scratch space; may be repeated)')


def source_names():
    from any2kvm_os.sources import base as sources
    return sorted(sources.plugins())


@contextlib.contextmanager
def errors():
    """Our errors as one-line CommandErrors (no traceback).  Any other
    error goes on to cliff as it is, unless its text holds a password
    (a library's message quoting a URL): then as a CommandError with the
    password masked (``--debug`` still shows the traceback)."""
    from any2kvm_os import api
    from any2kvm_os import redact
    try:
        yield
    except exceptions.CommandError as e:
        text = str(e)
        if redact.text(text) != text:
            raise exceptions.CommandError(redact.text(text)) from e
        raise
    except Exception as e:
        msg = api.error_message(e)
        if msg is None:
            text = str(e)
            if redact.text(text) == text:
                raise
            msg = redact.text(' '.join(text.split()))
        raise exceptions.CommandError(msg) from e


def show(data, order=(), formatters=None):
    """(columns, values) of a ShowOne: the keys of ``order`` first (those
    present), then the others sorted; a value is wrapped by its key's
    formatter (a FormattableColumn class), a dict by DictColumn."""
    formatters = formatters or {}
    keys = tuple(k for k in order if k in data) + tuple(
        sorted(k for k in data if k not in order))
    values = []
    for key in keys:
        value = data[key]
        if key in formatters:
            value = formatters[key](value)
        elif isinstance(value, dict):
            value = format_columns.DictColumn(value)
        values.append(value)
    return keys, tuple(values)


class ChainColumn(columns.FormattableColumn):
    """A snapshot chain, leaf first: a line per layer in a table."""

    def human_readable(self):
        return '\n'.join(
            '%s (%s %s, id %s, parent %s)' % (
                layer.get('name'), layer.get('format'),
                layer.get('subformat'), layer.get('id'),
                layer.get('parent_id') or '-')
            for layer in self._value or ())


class InspectDisksColumn(columns.FormattableColumn):
    """The disks of ``inspect``: a line per disk in a table."""

    def human_readable(self):
        return '\n'.join(
            '%s: %s, %s, %s bytes, %d layer(s)' % (
                disk.get('index'), disk.get('name'), disk.get('format'),
                disk.get('virtual_size'), len(disk.get('chain') or ()))
            for disk in self._value or ())


class ImportDisksColumn(columns.FormattableColumn):
    """The results of ``import``: a line per disk in a table."""

    def human_readable(self):
        return '\n'.join(
            '%s: %s %s, %s bytes' % (
                r.get('disk'), r.get('name'), r.get('id') or r.get('path'),
                r.get('size'))
            for r in self._value or ())


class ServerColumn(columns.FormattableColumn):
    """The server of ``import --create-server``: name and id, the plan's
    lines and the boot."""

    def human_readable(self):
        s = self._value or {}
        return '\n'.join(['%s (%s)' % (s.get('name'), s.get('id'))] +
                         list(s.get('plan') or ()) +
                         [s.get('boot_message') or ''])

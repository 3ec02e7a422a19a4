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

"""``xe`` commands as argv lists, and parsers of what ``xe`` prints.

Commands are argv lists, never shell text: ``['xe', 'vm-list',
'name-label=a; touch /tmp/pwned', 'params=uuid']``.  Each ``key=value`` is
one word whatever the value holds (spaces, quotes, ``=``, ``;``); the
transport quotes every word for the remote shell.  ``xe`` itself splits a
word at its first ``=`` only, so ``=`` inside a value is kept.  A line
break is the one thing a word cannot hold: xe's thin client sends its
words to xapi joined by newlines, and xapi splits them at newlines and
drops a carriage return that ends one (xen-api ``ocaml/xe-cli/newcli.ml``,
``ocaml/xapi-cli-server/xapi_cli.ml`` ``parse_session_and_args``), so
``name-label=a<LF>force=true`` would reach xapi as two parameters: a
value holding ``\n`` or ``\r`` is refused, as is NUL.

What ``xe`` prints, as xapi's CLI server writes it
(xapi-project/xen-api, ``ocaml/xapi-cli-server/cli_printer.ml``,
``cli_operations.ml``, ``records.ml``) and as the XenServer
Administrator's Guide, "Command line interface", "Parameter types",
describes it:

* A record is one line per field, ``NAME (MODE): VALUE``.  MODE is
  `` RO``/`` RW`` (single value), ``SRO``/``SRW`` (set), ``MRO``/``MRW``
  (map); a deprecated field has `` [DEPRECATED]`` after the mode.  The
  names are padded to a common width: the first line on the right
  (``uuid ( RO)          : ...``), the others on the left
  (``     name-label ( RW): ...``), so the amount of space varies and is
  ignored here.  The value is everything after ``": "`` (an empty value
  leaves ``"NAME ( RO): "``, whose trailing space some copies lose).
* Records are separated by one blank line (each record ends with
  ``"\\n"`` and is printed with one more); ``*-list`` with no match
  prints nothing.
* A map value is ``k1: v1; k2: v2``, a set value ``a; b; c``; neither
  escapes ``"; "`` or ``": "`` inside keys or values, so such values are
  read back as well as can be (an item without ``": "`` is taken to
  continue the previous value).
* ``--minimal`` prints the first field of each record (or each item of a
  list) joined by commas on one line, with ``,`` escaped as ``\\,`` and
  ``\\`` as ``\\\\``.
* ``param-get`` and the commands that return a uuid (``vm-snapshot``)
  print the value and a newline.
* ``<not in database>`` stands for a missing object or a null reference.

* With ``params=a,b`` only those fields are printed, in the order of
  xapi's own table (not the order asked); a name xapi does not know is
  left out silently (``select_fields`` in cli_operations.ml).

The host's answers are not trusted: sizes and counts are bounded; a
field printed twice in one record is a malformed answer, and a line that
is not a field continues the value above it, so a value with a newline in
it (written by a guest or a user) cannot pass for a field that was asked
for; a field that was not asked for is left out, so a host that prints
more than asked is read all the same; every error names the command.
"""

import re
import shlex

from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import location

XE = 'xe'
#: Largest answer read from one command.
MAX_OUTPUT_BYTES = 4 << 20
#: Most records, fields of a record, items of a map/set, --minimal items.
MAX_RECORDS = 4096
MAX_FIELDS = 512
MAX_ITEMS = 4096
#: Longest value of a field.
MAX_VALUE = 256 << 10

#: Fields whose value is kept as printed, spaces at its ends included:
#: names someone typed (``"db "`` and ``"db"`` are two name-labels).
#: Every other value is stripped by :func:`parse_records`.
VERBATIM_FIELDS = frozenset(('name-label', 'name-description',
                             'network-name-label'))

NOT_IN_DATABASE = '<not in database>'
NULL_VALUES = ('', NOT_IN_DATABASE, 'OpaqueRef:NULL', '<invalid reference>')
MODES = (' RO', ' RW', 'SRO', 'SRW', 'MRO', 'MRW')

#: A field name as xapi writes them (``name-label``, ``VCPUs-max``,
#: ``qos_algorithm_type``, ``snapshot_of``).
_NAME_CHARS = frozenset('abcdefghijklmnopqrstuvwxyz'
                        'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.')
_KEY_CHARS = _NAME_CHARS | frozenset(':')


# --- commands -------------------------------------------------------------

def _word(key, value):
    if not key or not set(key) <= _KEY_CHARS:
        raise ValueError('xe argument name %r' % (key,))
    if not isinstance(value, str):
        raise TypeError('xe argument %s: %r is not text' % (key, value))
    if '\0' in value:
        raise errors.XenServerError(
            reason='xe argument %s: a NUL character cannot be passed' % key)
    if '\n' in value or '\r' in value:
        # xe would pass the rest of the value to xapi as more words.
        raise errors.XenServerError(
            reason='xe argument %s: a line break cannot be passed (xe '
            'would split the value into several arguments)' % key)
    return '%s=%s' % (key, value)


def command(name, args=(), minimal=False):
    """``['xe', name, 'k=v', ...]``: ``args`` is a dict or (key, value)
    pairs; each pair becomes exactly one word."""
    if not name or not set(name) <= _NAME_CHARS:
        raise ValueError('xe command %r' % (name,))
    pairs = args.items() if isinstance(args, dict) else args
    argv = [XE, name] + [_word(k, v) for k, v in pairs]
    if minimal:
        argv.append('--minimal')
    return argv


def list_command(cls, filters=(), params=(), minimal=False):
    """``xe <cls>-list`` with ``key=value`` filters and a ``params=``
    selection (``params`` a sequence of field names)."""
    pairs = list(filters.items() if isinstance(filters, dict) else filters)
    if params:
        for p in params:
            if not p or not set(p) <= _NAME_CHARS:
                raise ValueError('xe field name %r' % (p,))
        pairs.append(('params', ','.join(params)))
    return command('%s-list' % cls, pairs, minimal=minimal)


def _uuid(uuid):
    if not location.is_uuid(uuid):
        raise errors.XenServerError(reason='%r is not a uuid' % (uuid,))
    return uuid


def param_get(cls, uuid, param, key=None):
    """``xe <cls>-param-get uuid=U param-name=P [param-key=K]``."""
    pairs = [('uuid', _uuid(uuid)), ('param-name', param)]
    if key is not None:
        pairs.append(('param-key', key))
    return command('%s-param-get' % cls, pairs)


def vm_snapshot(vm_uuid, new_name, new_description=None):
    """``xe vm-snapshot uuid=U new-name-label=N [new-name-description=D]``:
    prints the snapshot's uuid."""
    pairs = [('uuid', _uuid(vm_uuid)), ('new-name-label', new_name)]
    if new_description is not None:
        pairs.append(('new-name-description', new_description))
    return command('vm-snapshot', pairs)


def snapshot_uninstall(snapshot_uuid):
    """``xe snapshot-uninstall snapshot-uuid=S force=true``: destroys the
    snapshot and the VDIs only it uses (without ``force`` xe asks for
    confirmation on the terminal)."""
    return command('snapshot-uninstall', [('snapshot-uuid',
                                           _uuid(snapshot_uuid)),
                                          ('force', 'true')])


def vm_uninstall(uuid):
    """``xe vm-uninstall uuid=U force=true``: the same for a VM (and its
    snapshots).  Not for a snapshot itself: xe selects the VM as
    ``vm-shutdown`` does, among VMs that are not templates, and a
    snapshot is a template ("No matching VMs found")."""
    return command('vm-uninstall', [('uuid', _uuid(uuid)),
                                    ('force', 'true')])


def template_uninstall(uuid):
    """``xe template-uninstall template-uuid=U force=true``: the same as
    ``snapshot-uninstall`` for any template record, a snapshot included
    (cli_operations.ml ``template_uninstall``)."""
    return command('template-uninstall', [('template-uuid', _uuid(uuid)),
                                          ('force', 'true')])


def vm_shutdown(uuid, force=False):
    """``xe vm-shutdown uuid=U`` (clean: asks the guest) or, with
    ``force``, ``force=true`` (hard: pulls the plug)."""
    pairs = [('uuid', _uuid(uuid))]
    if force:
        pairs.append(('force', 'true'))
    return command('vm-shutdown', pairs)


def vm_start(uuid):
    """``xe vm-start uuid=U``."""
    return command('vm-start', [('uuid', _uuid(uuid))])


def vm_unpause(uuid):
    """``xe vm-unpause uuid=U``: a paused VM runs on (xapi takes it only
    from paused)."""
    return command('vm-unpause', [('uuid', _uuid(uuid))])


def vm_resume(uuid):
    """``xe vm-resume uuid=U``: a suspended VM runs again from its saved
    memory (xapi takes it only from suspended)."""
    return command('vm-resume', [('uuid', _uuid(uuid))])


def power_state(uuid):
    """``xe vm-param-get uuid=U param-name=power-state``."""
    return param_get('vm', uuid, 'power-state')


def describe(argv):
    """How a command is named in messages: the argv as a shell would
    read it, shortened."""
    text = ' '.join(shlex.quote(w) for w in argv)
    return text if len(text) <= 300 else text[:297] + '...'


# --- answers --------------------------------------------------------------

def _bad(argv, reason):
    return errors.XeOutputError(command=describe(argv), reason=reason)


def text_of(output, argv):
    """The runner's answer as text: str, or bytes of UTF-8; bounded."""
    if isinstance(output, (bytes, bytearray)):
        if len(output) > MAX_OUTPUT_BYTES:
            raise _bad(argv, 'more than %d bytes' % MAX_OUTPUT_BYTES)
        try:
            output = bytes(output).decode('utf-8')
        except UnicodeDecodeError as e:
            raise _bad(argv, 'not UTF-8 (%s)' % e.reason)
    if not isinstance(output, str):
        raise _bad(argv, 'the runner returned %s, not text'
                   % type(output).__name__)
    if len(output) > MAX_OUTPUT_BYTES:
        raise _bad(argv, 'more than %d characters' % MAX_OUTPUT_BYTES)
    if '\0' in output:
        raise _bad(argv, 'a NUL character')
    return output.replace('\r\n', '\n')


_FIELD_RE = re.compile(
    r'^\s*(?P<name>[A-Za-z0-9_.-]+)\s*'
    r'\(\s*(?P<mode>[MS]?R[OW])\s*\)'
    r'(?:\s*\[DEPRECATED\])?\s*:(?P<value>.*)$')


def _field(line):
    """(name, mode, value) of one record line, or None.

    xapi writes ``NAME (MODE): VALUE`` with the names padded by spaces
    (cli_printer.ml ``multi_line_record``); spacing around the name, the
    mode and the colon is not relied on (``uuid (RO):x`` is read too),
    and the value is everything after the colon less one space."""
    found = _FIELD_RE.match(line)
    if found is None:
        return None
    mode = found.group('mode')
    value = found.group('value')
    if value.startswith(' '):
        value = value[1:]
    return found.group('name'), mode.rjust(3), value


def parse_records(output, argv, fields=None, required=()):
    """The records ``xe <cls>-list``/``-param-list`` printed: a list of
    dicts {field name: value text}, in the order printed.

    ``fields``: the names asked for with ``params=``; a field outside
    them is left out (real xe prints only those asked for, in the order of
    its own table; a host that prints more is not wrong for it).
    ``required``: names every record must hold.  A line that is not a
    field continues the value of the field above it (xapi prints a value
    holding a newline as it is); a field printed twice in one record is a
    malformed answer, so a value cannot pass for a field that was asked
    for.  Values are stripped of the spaces at their ends, but for the
    names of :data:`VERBATIM_FIELDS`.
    """
    text = text_of(output, argv)
    records = []
    current = None
    last = None
    blank = False
    for number, line in enumerate(text.split('\n'), 1):
        if not line.strip():
            current = last = None
            blank = True
            continue
        after_blank, blank = blank, False
        found = _field(line)
        if found is None:
            if current is None or last is None:
                # Right after a record's end: most likely the rest of a
                # value that holds a blank line (a name set through
                # XenAPI can), which xe prints as it is.
                hint = (' (a value with a blank line in it, such as a '
                        'name set through XenAPI? rename it on the host)'
                        if records and after_blank else '')
                raise _bad(argv, 'line %d is not "name ( RO): value": %r%s'
                           % (number, line[:80], hint))
            if last in current:
                current[last] += '\n' + line
                if len(current[last]) > MAX_VALUE:
                    raise _bad(argv, 'field %s is longer than %d '
                               'characters' % (last, MAX_VALUE))
            continue
        name, _mode, value = found
        if len(value) > MAX_VALUE:
            raise _bad(argv, 'field %s is longer than %d characters'
                       % (name, MAX_VALUE))
        if current is None:
            if len(records) >= MAX_RECORDS:
                raise _bad(argv, 'more than %d records' % MAX_RECORDS)
            current = {}
            seen = set()
            records.append(current)
        if name in seen:
            raise _bad(argv, 'line %d: field %s appears twice in one record'
                       % (number, name))
        seen.add(name)
        if len(seen) > MAX_FIELDS:
            raise _bad(argv, 'a record of more than %d fields' % MAX_FIELDS)
        last = name
        if fields is not None and name not in fields:
            continue
        current[name] = value
    for i, record in enumerate(records, 1):
        for name, value in record.items():
            if name not in VERBATIM_FIELDS:
                record[name] = value.strip()
        missing = [f for f in required if f not in record]
        if missing:
            raise _bad(argv, 'record %d lacks %s' % (i, ', '.join(missing)))
    return records


def parse_record(output, argv, fields=None, required=()):
    """The one record of ``output``, or None when nothing was printed;
    several records are a malformed answer."""
    records = parse_records(output, argv, fields, required)
    if len(records) > 1:
        raise _bad(argv, '%d records where one was expected' % len(records))
    return records[0] if records else None


def parse_minimal(output, argv):
    """The values ``--minimal`` printed, commas and backslashes
    unescaped; [] for an empty answer."""
    text = text_of(output, argv)
    if text.endswith('\n'):
        text = text[:-1]
    if '\n' in text:
        raise _bad(argv, '--minimal printed more than one line')
    if not text:
        return []
    items, word, escaped = [], [], False
    for char in text:
        if escaped:
            word.append(char)
            escaped = False
        elif char == '\\':
            escaped = True
        elif char == ',':
            items.append(''.join(word))
            word = []
            if len(items) >= MAX_ITEMS:
                raise _bad(argv, 'more than %d values' % MAX_ITEMS)
        else:
            word.append(char)
    if escaped:
        raise _bad(argv, 'ends with a lone backslash')
    items.append(''.join(word))
    return items


def parse_value(output, argv):
    """The one value ``param-get`` (or ``vm-snapshot``) printed."""
    text = text_of(output, argv)
    if text.endswith('\n'):
        text = text[:-1]
    if '\n' in text:
        raise _bad(argv, 'more than one line where one value was expected')
    if len(text) > MAX_VALUE:
        raise _bad(argv, 'a value longer than %d characters' % MAX_VALUE)
    return text


def parse_uuid(output, argv):
    """The uuid a command printed (``vm-snapshot``)."""
    value = parse_value(output, argv).strip()
    if not location.is_uuid(value):
        raise _bad(argv, 'expected a uuid, got %r' % value[:80])
    return value.lower()


def parse_map(value, argv=None, name=None):
    """A map value ``k1: v1; k2: v2`` as a dict (``<not in database>``
    and the empty value give {}).  An item without ``": "`` continues the
    previous value (a value that held ``"; "``)."""
    if value in NULL_VALUES:
        return {}
    out = {}
    last = None
    items = value.split('; ')
    if len(items) > MAX_ITEMS:
        raise _bad(argv or [XE], 'map %s has more than %d items'
                   % (name or '', MAX_ITEMS))
    for item in items:
        key, sep, val = item.partition(': ')
        if not sep and item.endswith(':'):
            key, sep, val = item[:-1], ':', ''
        if not sep or not key:
            if last is None:
                raise _bad(argv or [XE], 'map %s: %r is not "key: value"'
                           % (name or '', item[:80]))
            out[last] += '; ' + item
            continue
        out[key] = val
        last = key
    return out


def parse_set(value, argv=None, name=None):
    """A set value ``a; b; c`` as a list ([] for an empty value)."""
    if value in NULL_VALUES:
        return []
    items = value.split('; ')
    if len(items) > MAX_ITEMS:
        raise _bad(argv or [XE], 'set %s has more than %d items'
                   % (name or '', MAX_ITEMS))
    return items


def is_null(value):
    """Whether a reference field names no object."""
    return value is None or value in NULL_VALUES


def parse_bool(value, argv, name):
    value = (value or '').strip()
    if value in ('true', 'false'):
        return value == 'true'
    raise _bad(argv, 'field %s is %r, not true or false' % (name, value[:80]))


def parse_int(value, argv, name, minimum=0, maximum=None):
    """Field ``name`` of an answer to ``argv``: a number of at most 20
    ASCII digits, at least ``minimum`` and, given, at most ``maximum``."""
    text = (value or '').strip()
    if not (text.isdigit() and text.isascii()) or len(text) > 20:
        raise _bad(argv, 'field %s is %r, not a number' % (name, text[:80]))
    number = int(text)
    if number < minimum:
        raise _bad(argv, 'field %s is %d, less than %d'
                   % (name, number, minimum))
    if maximum is not None and number > maximum:
        raise _bad(argv, 'field %s is %d, more than %d'
                   % (name, number, maximum))
    return number

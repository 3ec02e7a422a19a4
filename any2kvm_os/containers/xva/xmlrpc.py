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

"""The XML-RPC values of XenServer's ``ova.xml``, parsed with bounds.

XenServer describes an exported VM as one XML-RPC ``<value>`` (structs,
arrays and scalars, as XenAPI speaks them).  :class:`XmlRpc` turns such an
element tree into Python values, bounding its nesting and its element
count; it knows nothing of what the values mean (see :mod:`.metadata`).
"""

from any2kvm_os import exception

MAX_XML_DEPTH = 32
MAX_XML_ELEMENTS = 4000000


class XmlRpc(object):
    """Turns an XML-RPC ``<value>`` tree into Python values, bounded.

    ``where`` names the document in errors (InvalidArchive).
    """

    SCALARS = ('string', 'dateTime.iso8601', 'base64')
    INTS = ('int', 'i4', 'i8')

    def __init__(self, where):
        self.where = where
        self.elements = 0

    def bad(self, reason):
        return exception.InvalidArchive(path=self.where, reason=reason)

    def value(self, elem, depth=0):
        if depth > MAX_XML_DEPTH:
            raise self.bad('nested deeper than %d values' % MAX_XML_DEPTH)
        self.elements += 1
        if self.elements > MAX_XML_ELEMENTS:
            raise self.bad('more than %d XML elements' % MAX_XML_ELEMENTS)
        if elem.tag != 'value':
            raise self.bad('<%s> where a <value> was expected' % elem.tag)
        children = list(elem)
        if not children:
            return elem.text or ''
        if len(children) != 1:
            raise self.bad('a <value> holds %d elements' % len(children))
        child = children[0]
        tag = child.tag
        if tag in self.SCALARS:
            return child.text or ''
        if tag in self.INTS:
            try:
                return int((child.text or '').strip())
            except ValueError:
                raise self.bad('bad <%s> %r' % (tag, child.text))
        if tag == 'boolean':
            text = (child.text or '').strip()
            if text not in ('0', '1'):
                raise self.bad('bad <boolean> %r' % child.text)
            return text == '1'
        if tag == 'double':
            try:
                return float((child.text or '').strip())
            except ValueError:
                raise self.bad('bad <double> %r' % child.text)
        if tag == 'nil':
            return None
        if tag == 'struct':
            out = {}
            for member in child:
                self.elements += 1
                if member.tag != 'member':
                    raise self.bad('<%s> in a <struct>' % member.tag)
                name = member.find('name')
                val = member.find('value')
                if name is None or val is None or len(member) != 2:
                    raise self.bad('a struct <member> needs one <name> and '
                                   'one <value>')
                out[name.text or ''] = self.value(val, depth + 1)
            return out
        if tag == 'array':
            data = list(child)
            if len(data) != 1 or data[0].tag != 'data':
                raise self.bad('an <array> needs one <data>')
            return [self.value(v, depth + 1) for v in data[0]]
        raise self.bad('unknown XML-RPC type <%s>' % tag)

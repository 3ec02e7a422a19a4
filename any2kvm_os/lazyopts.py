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

"""A module's oslo.config options, made on first use.

A module owning ``[any2kvm]`` options writes their defaults in a plain
table (which its classes use too) and the options in a function, and
sets ``__getattr__ = lazyopts.module_getattr(globals(), _options)``:
``module.OPTIONS`` (read by :mod:`any2kvm_os.opts` and by code that
reads configuration) is then made on first use, once, so that a
conversion that reads no configuration never imports oslo.config.
"""


def module_getattr(namespace, make):
    """The module-level ``__getattr__`` (PEP 562) of the module whose
    ``globals()`` is ``namespace``: ``OPTIONS`` is ``make()``, made once
    and kept in the module."""
    def __getattr__(name):
        if name == 'OPTIONS':
            namespace['OPTIONS'] = options = make()
            return options
        raise AttributeError('module %r has no attribute %r'
                             % (namespace['__name__'], name))
    return __getattr__

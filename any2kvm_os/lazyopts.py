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

:func:`configuration_found` tells a command whether there is any
configuration to read at all, without importing oslo.config: where none
is, the command runs on the defaults (the same tables) and skips
oslo.config's import (about 0.03 s of a command's 0.14 s start-up).
"""

import os


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


def _config_dirs(project):
    """The directories oslo.config looks in for default configuration
    files and ``.conf.d`` directories (``oslo_config.cfg._get_config_dirs``
    of ``project``; ``tests/unit/test_lazyopts.py`` holds the two equal)."""
    home = os.path.abspath(os.path.expanduser('~'))
    dirs = [os.path.join(home, '.' + project), home,
            os.path.join('/etc', project), '/etc']
    for var in ('SNAP_COMMON', 'SNAP'):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], 'etc', project))
    return dirs


def configuration_found(project, prog):
    """Whether ``ConfigOpts()(args=[], project=project, prog=prog)`` would
    read anything but defaults: a default configuration file
    (``<project>.conf`` or ``<prog>.conf``) or directory (``.conf.d``) in
    one of oslo.config's directories, or an option in the environment
    (oslo.config's environment source reads ``OS_<GROUP>__<OPTION>``).
    Errs on the side of True: any ``OS_…__…`` variable counts."""
    if any(k.startswith('OS_') and '__' in k for k in os.environ):
        return True
    names = [n + ext for n in (project, prog) if n
             for ext in ('.conf', '.conf.d')]
    return any(os.path.exists(os.path.join(d, n))
               for d in _config_dirs(project) for n in names)

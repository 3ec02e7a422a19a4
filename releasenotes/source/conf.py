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

"""Sphinx configuration of the any2kvm_os release notes (reno)."""

import importlib.util

extensions = [
    'reno.sphinxext',
]

source_suffix = '.rst'
master_doc = 'index'

project = 'any2kvm_os Release Notes'
copyright = 'any2kvm_os developers'

# Release notes carry no version of their own.
version = ''
release = ''

exclude_patterns = []
pygments_style = 'native'

if importlib.util.find_spec('openstackdocstheme') is not None:
    extensions.append('openstackdocstheme')
    html_theme = 'openstackdocs'
    openstackdocs_repo_name = 'openstack/any2kvm_os'
    openstackdocs_auto_name = False
    openstackdocs_bug_project = 'any2kvm_os'
    openstackdocs_bug_tag = 'releasenotes'
else:
    html_theme = 'alabaster'

htmlhelp_basename = 'any2kvm_osReleaseNotesdoc'

# Internationalization: where reno's translated notes would live.
locale_dirs = ['locale/']

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

"""Sphinx configuration of the any2kvm_os documentation."""

import importlib.util

# -- General ---------------------------------------------------------------

extensions = [
    # Writes _static/any2kvm_os.conf.sample from
    # etc/oslo-config-generator/any2kvm_os.conf at every build.
    'oslo_config.sphinxconfiggen',
    # The show-options directive of the configuration reference.
    'oslo_config.sphinxext',
    # autoprogram-cliff: the openstack any2kvm commands from their parsers.
    'cliff.sphinxext',
]

autoprogram_cliff_application = 'openstack'
# The output formatter options every openstack command has.
autoprogram_cliff_ignored = [
    '--help', '--format', '--column', '--max-width', '--fit-width',
    '--print-empty', '--noindent', '--prefix', '--quote', '--sort-column',
    '--sort-ascending', '--sort-descending']

config_generator_config_file = (
    '../../etc/oslo-config-generator/any2kvm_os.conf')
sample_config_basename = '_static/any2kvm_os'

source_suffix = '.rst'
master_doc = 'index'

project = 'any2kvm_os'
copyright = 'any2kvm_os developers'

exclude_patterns = ['_build']
# Quotes and ellipses, but no dashes: "--option" in the help of the
# commands stays two hyphens.
smartquotes_action = 'qe'
pygments_style = 'native'
add_module_names = False

# -- HTML ------------------------------------------------------------------

if importlib.util.find_spec('openstackdocstheme') is not None:
    extensions.append('openstackdocstheme')
    html_theme = 'openstackdocs'
    openstackdocs_repo_name = 'openstack/any2kvm_os'
    openstackdocs_pdf_link = False
    openstackdocs_auto_name = False
    openstackdocs_bug_project = 'any2kvm_os'
    openstackdocs_bug_tag = 'doc'
else:
    html_theme = 'alabaster'

htmlhelp_basename = 'any2kvm_osdoc'

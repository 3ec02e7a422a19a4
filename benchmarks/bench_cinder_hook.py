#!/usr/bin/env python3
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

"""Image-to-volume time: the Cinder hook against stock Cinder.

On a running loopback cloud (tools/loopback-cloud up): the 3-level
XenServer chain of bench_convert.py (4 GiB virtual, 1 GiB data, FATtools,
cached in the work directory) is uploaded to Glance as the XenServer
export operators have (``vhd``/``ovf`` tgz), and its flattened raw (made
by ``any2kvm convert``) as a ``raw``/``bare`` image.  Then, alternately:

hook
    ``volume create --image <tgz>`` on the hooked backend (type any2kvm):
    download, decompress, fold the chain, write the volume;
stock
    ``volume create --image <raw>`` on the stock backend (type loopback):
    what stock Cinder does with an image that was already flattened.

Each is timed from the create request until the volume is ``available``
(polled every 0.2 s); the best of ``--runs`` counts.  Every volume's
content (read from the NFS share) must hash to the chain's digest, and
its allocated size is shown.  Needs a few GiB in the cloud's run
directory (Glance keeps the 4 GiB raw in full).

Exit status: 0 when every volume was made and correct; 1 otherwise; 2 for
a set-up error.
"""

import argparse
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_convert as bc  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_openrc(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith('export '):
                name, _, value = line[7:].partition('=')
                words = shlex.split(value)
                env[name] = words[0] if words else ''
    return env


def clients(env):
    from cinderclient import client as cinder_client
    from glanceclient import client as glance_client
    from keystoneauth1.identity import v3
    from keystoneauth1 import session

    auth = v3.Password(auth_url=env['OS_AUTH_URL'],
                       username=env['OS_USERNAME'],
                       password=env['OS_PASSWORD'],
                       project_name=env['OS_PROJECT_NAME'],
                       user_domain_name='Default',
                       project_domain_name='Default')
    sess = session.Session(auth=auth)
    kw = {'session': sess, 'interface': 'public',
          'region_name': env.get('OS_REGION_NAME')}
    return glance_client.Client('2', **kw), cinder_client.Client('3', **kw)


def upload(glance, path, disk_format, container_format):
    image = glance.images.create(
        name='any2kvm-bench-%s' % os.path.basename(path),
        disk_format=disk_format, container_format=container_format)
    with open(path, 'rb') as f:
        glance.images.upload(image['id'], f,
                             image_size=os.path.getsize(path))
    while glance.images.get(image['id'])['status'] != 'active':
        time.sleep(0.5)
    return image['id']


def make_volume(cinder, image_id, size_gib, volume_type):
    t0 = time.perf_counter()
    vol = cinder.volumes.create(size_gib, imageRef=image_id,
                                volume_type=volume_type,
                                name='any2kvm-bench-%s' % volume_type)
    while True:
        status = cinder.volumes.get(vol.id).status
        if status in ('available', 'error'):
            return vol.id, status, time.perf_counter() - t0
        time.sleep(0.2)


def delete_volume(cinder, volume_id):
    from cinderclient import exceptions
    cinder.volumes.delete(volume_id)
    while True:
        try:
            cinder.volumes.get(volume_id)
        except exceptions.NotFound:
            return
        time.sleep(0.5)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--openrc',
                   default=os.path.join(REPO, 'run', 'cloud', 'openrc'),
                   help='openrc of a tools/loopback-cloud cloud (default: '
                        'the default run directory)')
    p.add_argument('--workdir', default='/var/tmp/a2k-bench',
                   help='image cache shared with bench_convert.py')
    p.add_argument('--runs', type=int, default=2)
    p.add_argument('--size', type=bc.parse_size, default=4 * bc.GiB)
    p.add_argument('--data', type=bc.parse_size, default=bc.GiB)
    args = p.parse_args(argv)
    if not os.path.isfile(args.openrc):
        print('%s: no such file; bring a cloud up with tools/loopback-cloud '
              'up' % args.openrc, file=sys.stderr)
        return 2
    export = os.path.join(os.path.dirname(args.openrc), 'lib', 'cinder',
                          'export')
    os.makedirs(args.workdir, exist_ok=True)
    path, manifest = bc.gen_chain(args.workdir, args.size, args.data,
                                  seed=42)
    tgz = os.path.join(path, 'chain.tgz')
    flat = os.path.join(path, 'flat.raw')
    if not os.path.exists(flat):
        subprocess.run([os.path.join(os.path.dirname(sys.executable),
                                     'any2kvm'), 'convert', tgz, flat],
                       check=True)
    digest = manifest['digest']
    if bc.content_digest(flat) != digest:
        print('flattened raw differs from the chain', file=sys.stderr)
        return 1
    size_gib = -(-args.size // bc.GiB)
    glance, cinder = clients(parse_openrc(args.openrc))
    images = {}
    failed = False
    try:
        bc.out('uploading %s (%s) and %s (%s) to Glance' % (
            tgz, bc.fmt_size(os.path.getsize(tgz)), flat,
            bc.fmt_size(os.path.getsize(flat))))
        images['hook'] = (upload(glance, tgz, 'vhd', 'ovf'), 'any2kvm')
        images['stock'] = (upload(glance, flat, 'raw', 'bare'), 'loopback')
        times = {'hook': [], 'stock': []}
        for run in range(args.runs):
            for case in ('hook', 'stock'):
                image_id, vtype = images[case]
                vol_id, status, secs = make_volume(cinder, image_id,
                                                   size_gib, vtype)
                vol_file = os.path.join(export, 'volume-%s' % vol_id)
                ok = status == 'available' and \
                    bc.content_digest(vol_file) == digest
                alloc = os.stat(vol_file).st_blocks * 512 \
                    if os.path.exists(vol_file) else 0
                bc.out('run %d %-5s %-9s %7.2f s  content %s  allocated '
                       '%s' % (run + 1, case, status, secs,
                               'OK' if ok else 'WRONG', bc.fmt_size(alloc)))
                failed |= not ok
                times[case].append(secs)
                delete_volume(cinder, vol_id)
        hook, stock = min(times['hook']), min(times['stock'])
        bc.out()
        bc.out('image-to-volume, best of %d (%s virtual, %s data):' % (
            args.runs, bc.fmt_size(args.size), bc.fmt_size(args.data)))
        bc.out('  hook, XenServer tgz chain -> volume   %7.2f s' % hook)
        bc.out('  stock Cinder, flattened raw -> volume %7.2f s' % stock)
        bc.out('  ratio hook/stock                      %7.2f' % (
            hook / stock))
    finally:
        for image_id, _t in images.values():
            glance.images.delete(image_id)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

import assert from 'node:assert/strict';
import { it } from 'node:test';
import {
  cgroup1Mounts,
  cgroup2Mount,
  cgroupV2Path,
  containerIdFromCgroup,
  containerIdFromV1,
  v1HasContainers,
} from './container.js';

const id = 'c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789';
const id2 = 'feed000000000000000000000000000000000000000000000000000000000042';

const cases: Array<[string, string, string | null]> = [
  ['host process', '/user.slice/user-1000.slice/session-3.scope', null],
  ['systemd service', '/system.slice/ssh.service', null],
  ['root cgroup', '/', null],
  ['docker, systemd driver', `/system.slice/docker-${id}.scope`, id],
  ['docker, cgroupfs driver', `/docker/${id}`, id],
  [
    'containerd CRI, systemd driver',
    `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-${id}.scope`,
    id,
  ],
  [
    'CRI-O',
    `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabcd.slice/crio-${id}.scope`,
    id,
  ],
  [
    'CRI-O conmon is not the container',
    `/kubepods.slice/kubepods-podabcd.slice/crio-conmon-${id}.scope`,
    null,
  ],
  ['podman, systemd', `/machine.slice/libpod-${id}.scope`, id],
  ['podman, nested payload cgroup', `/machine.slice/libpod-${id}.scope/container`, id],
  ['podman, cgroupfs', `/libpod_parent/libpod-${id}`, id],
  ['podman conmon is not the container', `/machine.slice/libpod-conmon-${id}.scope`, null],
  ['kubelet, cgroupfs driver', `/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/${id}`, id],
  ['nerdctl', `/system.slice/nerdctl-${id}.scope`, id],
  ['containerd namespace', `/default/${id}`, id],
  ['nested: the innermost wins', `/docker/${id}/docker/${id2}`, id2],
  ['too short to be an id', '/docker/abc123', null],
  ['upper case is not a runtime id', `/docker/${id.toUpperCase()}`, null],
];

for (const [name, cgroup, want] of cases) {
  it(`container id: ${name}`, () => {
    assert.equal(containerIdFromCgroup(cgroup), want);
  });
}

it('reads the cgroup v2 path from /proc/PID/cgroup', () => {
  assert.equal(cgroupV2Path(`0::/system.slice/docker-${id}.scope\n`), `/system.slice/docker-${id}.scope`);
  assert.equal(cgroupV2Path('12:pids:/docker/x\n0::/init.scope\n'), '/init.scope');
  assert.equal(cgroupV2Path('12:pids:/docker/x\n'), null);
});

it('finds container ids in cgroup v1 lines (hybrid hosts) and the cgroup2 mount point', () => {
  assert.equal(containerIdFromV1(`12:pids:/docker/${id}\n4:memory:/docker/${id}\n0::/\n`), id);
  assert.equal(containerIdFromV1('4:memory:/user.slice\n1:name=systemd:/init.scope\n0::/\n'), null);
  assert.equal(
    cgroup2Mount(
      'tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n',
    ),
    '/sys/fs/cgroup/unified',
  );
  assert.equal(cgroup2Mount('cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n'), '/sys/fs/cgroup');
  assert.equal(cgroup2Mount('proc /proc proc rw 0 0\n'), null);
});

it('tells whether a cgroup v1 hierarchy holds containers (hybrid hosts)', () => {
  const tree: Record<string, string[]> = {
    '/a': ['user.slice', 'system.slice'],
    '/a/system.slice': ['ssh.service', `docker-${id}.scope`],
    '/b': ['user.slice', 'system.slice'],
    '/b/system.slice': ['ssh.service'],
    '/c': ['docker', 'user.slice'],
  };
  const list = (d: string) => tree[d] ?? [];
  assert.equal(v1HasContainers(list, '/a'), true);
  assert.equal(v1HasContainers(list, '/b'), false);
  assert.equal(v1HasContainers(list, '/c'), true);
  assert.deepEqual(
    cgroup1Mounts(
      'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\ncgroup2 /x cgroup2 rw 0 0\n',
    ),
    ['/sys/fs/cgroup/pids', '/sys/fs/cgroup/memory'],
  );
});

import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveModules } from './index.ts';

test('modules come in dependency order, each once; built-ins are accepted; unknown names fail', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-mods-'));
  writeFileSync(join(dir, 'modules.dep'), [
    'kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
    'kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko',
    'kernel/drivers/virtio/virtio_ring.ko:',
    'kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  ].join('\n'));
  writeFileSync(join(dir, 'modules.builtin'), 'kernel/fs/ext4/ext4.ko\n');
  const order = resolveModules(dir, ['virtio_console', 'virtio_pci', 'ext4']);
  t.deepEqual(order, [
    'kernel/drivers/virtio/virtio_ring.ko', 'kernel/drivers/virtio/virtio.ko',
    'kernel/drivers/char/virtio_console.ko', 'kernel/drivers/virtio/virtio_pci.ko',
  ]);
  t.throws(() => resolveModules(dir, ['nope']), { message: /nope/ });
});

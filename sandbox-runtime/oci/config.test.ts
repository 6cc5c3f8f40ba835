import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveUser, runSettings } from './config.ts';

test('the image config gives the defaults; the job overrides them (a command replaces Cmd, keeps Entrypoint)', (t) => {
  const cfg = { Entrypoint: ['/init'], Cmd: ['serve'], Env: ['PATH=/opt/bin', 'A=1', 'B=x=y'], WorkingDir: '/app', User: 'app' };
  t.deepEqual(runSettings(cfg, {}, 'img'), { argv: ['/init', 'serve'], env: { PATH: '/opt/bin', A: '1', B: 'x=y' }, workdir: '/app', user: 'app' });
  t.deepEqual(runSettings(cfg, { command: ['batch', '--n', '3'], env: { A: '2' }, workdir: '/tmp', user: '0' }, 'img'),
    { argv: ['/init', 'batch', '--n', '3'], env: { PATH: '/opt/bin', A: '2', B: 'x=y' }, workdir: '/tmp', user: '0' });
  t.deepEqual(runSettings({ Cmd: ['/bin/sh'] }, {}, 'img'), { argv: ['/bin/sh'], env: {}, workdir: '/', user: '' });
  t.throws(() => runSettings({}, {}, 'img'), { message: /sets no Entrypoint or Cmd/ });
  t.throws(() => runSettings({ Cmd: ['x'], WorkingDir: 'rel' }, {}, 'img'), { message: /not absolute/ });
});

test('users resolve from the image\'s own passwd and group, never through a link out of the root', (t) => {
  const d = mkdtempSync(join(tmpdir(), 'lodger-user-'));
  const root = join(d, 'root');
  mkdirSync(join(root, 'etc'), { recursive: true });
  writeFileSync(join(root, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n');
  writeFileSync(join(root, 'etc', 'group'), 'root:x:0:\nstaff:x:50:\n');
  t.is(resolveUser(root, '', 'img'), null);
  t.deepEqual(resolveUser(root, 'app', 'img'), { uid: 1000, gid: 1001 });
  t.deepEqual(resolveUser(root, 'app:staff', 'img'), { uid: 1000, gid: 50 });
  t.deepEqual(resolveUser(root, '1000', 'img'), { uid: 1000, gid: 1001 });
  t.deepEqual(resolveUser(root, '4242:7', 'img'), { uid: 4242, gid: 7 });
  t.deepEqual(resolveUser(root, '4242', 'img'), { uid: 4242, gid: 0 });
  t.throws(() => resolveUser(root, 'nobody', 'img'), { message: /"nobody" is not in the image's \/etc\/passwd/ });
  t.throws(() => resolveUser(root, 'app:wheel', 'img'), { message: /group "wheel"/ });
  // /etc a link to the host's /etc: read inside the root, where there is no passwd.
  rmSync(join(root, 'etc'), { recursive: true });
  symlinkSync('/etc', join(root, 'etc'));
  t.throws(() => resolveUser(root, 'root', 'img'), { message: /not in the image's/ });
  rmSync(join(root, 'etc'));
  mkdirSync(join(root, 'etc'));
  symlinkSync('/etc/passwd', join(root, 'etc', 'passwd'));
  t.throws(() => resolveUser(root, 'root', 'img'), { message: /not in the image's/ });
  rmSync(d, { recursive: true, force: true });
});

import test from 'ava';
import { backportsEntry, debianMirrors } from './backports.mjs';

const deb822 = `Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`;

test('the backports entry uses the host mirror of the release suite, not -security, and keeps its key', (t) => {
  const entry = backportsEntry([{ name: 'debian.sources', text: deb822 }], 'bookworm') as string;
  t.regex(entry, /^URIs: http:\/\/mirror\.example\/debian$/m);
  t.regex(entry, /^Suites: bookworm-backports$/m);
  t.regex(entry, /^Signed-By: \/usr\/share\/keyrings\/debian-archive-keyring\.gpg$/m);
  t.notRegex(entry, /security/);
});

test('one-line sources.list entries count, comments and other releases do not', (t) => {
  const list = '# deb http://old.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\ndeb http://m.example/debian bullseye main\n';
  t.deepEqual(debianMirrors([{ name: 'sources.list', text: list }], 'bookworm'), [{ uri: 'http://m.example/debian', signedBy: '/k.gpg' }]);
});

test('no configured Debian mirror gives no entry (setup says so instead of guessing an address)', (t) => {
  t.is(backportsEntry([{ name: 'x.sources', text: 'Types: deb\nURIs: http://a\nSuites: nodistro\n' }], 'bookworm'), null);
  t.is(backportsEntry([{ name: 'debian.sources', text: 'Enabled: no\n' + deb822.split('\n\n')[0] }], 'bookworm'), null);
});

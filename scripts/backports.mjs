// Where bookworm-backports comes from: the host's own configured Debian mirror (never a
// hard-coded address). Pure functions over the text of the apt sources, so they are
// unit-tested; setup.mjs reads the files and writes the entry.

/** The mirror URIs and Signed-By of every source of the release suite itself (not -security, not -updates). */
export function debianMirrors(files, codename) {
  const found = [];
  for (const { name, text } of files) {
    if (name.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (k) => {
          const m = new RegExp(`^${k}:[ \\t]*(.*)$`, 'mi').exec(stanza);
          return m ? m[1].trim() : '';
        };
        if (/^\s*Enabled:\s*no\s*$/mi.test(stanza)) continue;
        const types = field('Types').split(/\s+/);
        const suites = field('Suites').split(/\s+/);
        if (!types.includes('deb') || !suites.includes(codename)) continue;
        for (const uri of field('URIs').split(/\s+/).filter(Boolean)) found.push({ uri, signedBy: field('Signed-By') || null });
      }
    } else if (name.endsWith('.list')) {
      for (const raw of text.split('\n')) {
        const line = raw.replace(/#.*/, '').trim();
        // deb [options] URI suite components...
        const m = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)/.exec(line);
        if (!m || m[3] !== codename) continue;
        const signed = /signed-by=(\S+)/.exec(m[1] ?? '');
        found.push({ uri: m[2], signedBy: signed ? signed[1] : null });
      }
    }
  }
  const seen = new Set();
  return found.filter((f) => (seen.has(f.uri) ? false : (seen.add(f.uri), true)));
}

/** The deb822 entry for `${codename}-backports` from the host's mirrors, or null when it has none. */
export function backportsEntry(files, codename) {
  const mirrors = debianMirrors(files, codename);
  if (!mirrors.length || !/^[a-z]+$/.test(codename)) return null;
  const signedBy = mirrors.find((m) => m.signedBy)?.signedBy;
  return [
    '# Written by Lodger setup: gVisor (runsc) comes from backports; the mirror is the host\'s own.',
    'Types: deb',
    `URIs: ${mirrors.map((m) => m.uri).join(' ')}`,
    `Suites: ${codename}-backports`,
    'Components: main',
    ...(signedBy ? [`Signed-By: ${signedBy}`] : []),
    '',
  ].join('\n');
}

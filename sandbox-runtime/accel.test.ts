import test from 'ava';
import { decideAccel } from './accel.ts';

const kvm = (vendor: 'kvm_intel' | 'kvm_amd' | 'kvm_pvm' | null, available = true) => ({ device: '/dev/kvm', available, vendor, apiVersion: 12 });

test('auto picks KVM on kvm_intel/kvm_amd', (t) => {
  t.is(decideAccel('auto', kvm('kvm_intel'), false).accel, 'kvm');
  t.is(decideAccel('auto', kvm('kvm_amd'), false).accel, 'kvm');
});

test('auto falls back to TCG on kvm_pvm unless a PVM guest kernel is configured, and says why', (t) => {
  const c = decideAccel('auto', kvm('kvm_pvm'), false);
  t.is(c.accel, 'tcg');
  t.regex(c.reason, /kvm_pvm/);
  t.is(decideAccel('auto', kvm('kvm_pvm'), true).accel, 'kvm');
});

test('auto falls back to TCG without a usable /dev/kvm; explicit choices are honoured', (t) => {
  t.is(decideAccel('auto', { device: '/dev/kvm', available: false, vendor: null, error: 'ENOENT' }, false).accel, 'tcg');
  t.is(decideAccel('tcg', kvm('kvm_intel'), false).accel, 'tcg');
  t.is(decideAccel('kvm', kvm('kvm_pvm'), false).accel, 'kvm');
});

import { strict as assert } from 'node:assert';
import { test } from 'node:test';

import {
  IKernelState,
  ago,
  changesText,
  humanSize,
  isWarning,
  restartNote,
  statusText,
  variableStatus
} from '../src/format';

const GIB = 1024 ** 3;

function state(extra: Partial<IKernelState>): IKernelState {
  return {
    phase: 'empty',
    autosave: true,
    session: '/home/user/a.ipynb',
    generation: null,
    created: null,
    size: null,
    unsaved: 0,
    error: null,
    upload_error: null,
    saving: null,
    restoring: null,
    pending: [],
    ...extra
  };
}

test('sizes read as the kernel writes them', () => {
  assert.equal(humanSize(0), '0 B');
  assert.equal(humanSize(1023), '1023 B');
  assert.equal(humanSize(1536), '1.5 KiB');
  assert.equal(humanSize(1.2 * GIB), '1.2 GiB');
  assert.equal(humanSize(3000 * GIB), '3000.0 GiB');
});

test('ages fit a status bar', () => {
  assert.equal(ago(-3), '0 s');
  assert.equal(ago(12.7), '12 s');
  assert.equal(ago(125), '2 min');
  assert.equal(ago(7300), '2 h');
  assert.equal(ago(200000), '2 d');
});

test('each phase has its line', () => {
  const now = 1000;
  assert.equal(statusText(state({}), now), 'not saved yet');
  assert.equal(
    statusText(state({ phase: 'saved', generation: 3, created: 988, size: 1.2 * GIB }), now),
    'saved 12 s ago · 1.2 GiB'
  );
  assert.equal(
    statusText(state({ phase: 'unsaved', unsaved: 2, generation: 3, created: 880 }), now),
    '2 cells not saved yet · saved 2 min ago'
  );
  assert.equal(statusText(state({ phase: 'unsaved', unsaved: 1 }), now), '1 cell not saved yet');
  assert.equal(
    statusText(state({ phase: 'saving', saving: { since: 995, variable: 'df' } }), now),
    'saving... 5 s (df)'
  );
  assert.equal(
    statusText(
      state({
        phase: 'saving',
        saving: { since: 995, variable: '', done: 0.6 * GIB, total: 1.5 * GIB }
      }),
      now
    ),
    'saving 1.5 GiB... 40% 5 s'
  );
  assert.equal(
    statusText(
      state({
        phase: 'restoring',
        restoring: { generation: 4, done: 2.1 * GIB, total: 3 * GIB, waited: null }
      }),
      now
    ),
    'restoring 2.1 GiB of 3.0 GiB (70%)'
  );
  const failing = state({
    phase: 'failing',
    error: '/data is on a read-only disk, so no checkpoint could be written'
  });
  assert.equal(
    statusText(failing, now),
    'not saved: /data is on a read-only disk, so no checkpoint could be written'
  );
  assert.ok(isWarning(failing));
  assert.ok(!isWarning(state({ phase: 'saved' })));
  assert.ok(isWarning(state({ phase: 'saved', upload_error: 'bucket down' })));
  assert.equal(statusText(state({ phase: 'off', autosave: false }), now), 'automatic checkpoints off');
});

test('a restart note says the state comes back only when it does', () => {
  assert.match(restartNote(state({ phase: 'saved', generation: 2 })), /keeps your variables/);
  assert.match(restartNote(state({ phase: 'unsaved', unsaved: 1 })), /keeps your variables/);
  assert.match(restartNote(state({})), /Nothing is saved yet/);
  assert.match(restartNote(state({ autosave: false, generation: 2 })), /off/);
});

test('changes and variable statuses read as the command line prints them', () => {
  const row = {
    generation: 2,
    created: 1,
    size: 10,
    added: ['a'],
    changed: ['b', 'c'],
    removed: [],
    excluded: ['token'],
    error: null
  };
  assert.equal(changesText(row), 'added a; changed b, c; excluded token');
  assert.equal(changesText({ ...row, added: [], changed: [], excluded: [] }), 'no variable changed');
  const many = Array.from({ length: 10 }, (_, i) => `v${i}`);
  assert.equal(
    changesText({ ...row, added: many, changed: [], excluded: [] }),
    'added v0, v1, v2, v3, v4, v5, v6, v7 and 2 more'
  );
  assert.equal(changesText({ ...row, error: 'bad signature' }), 'unreadable: bad signature');
  const variable = {
    name: 'x',
    type: 'int',
    size: 5,
    status: 'saved' as const,
    reason: null,
    module: null,
    shared_with: [],
    carried: false
  };
  assert.equal(variableStatus(variable), 'saved');
  assert.equal(variableStatus({ ...variable, shared_with: ['y'] }), 'saved (with y)');
  assert.equal(
    variableStatus({ ...variable, status: 'skipped', reason: 'excluded by %persist exclude' }),
    'skipped: excluded by %persist exclude'
  );
  assert.equal(variableStatus({ ...variable, status: 'pending' }), 'not saved yet');
  assert.match(variableStatus({ ...variable, carried: true }), /carried over/);
});

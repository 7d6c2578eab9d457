import { strict as assert } from 'node:assert';
import { test } from 'node:test';

import { Requests } from '../src/requests';

test('replies settle their own request, whatever the order', async () => {
  const sent: Record<string, unknown>[] = [];
  const requests = new Requests(data => sent.push(data), 10_000);
  const history = requests.request('history');
  const save = requests.request('save', { args: [] });
  assert.deepEqual(
    sent.map(m => [m.id, m.request]),
    [
      [1, 'history'],
      [2, 'save']
    ]
  );
  assert.equal(requests.received({ reply: 2, ok: true, text: 'Checkpoint 3 written', data: null }), true);
  assert.equal(requests.received({ reply: 1, ok: true, text: '', data: [1, 2] }), true);
  assert.deepEqual((await save).text, 'Checkpoint 3 written');
  assert.deepEqual((await history).data, [1, 2]);
  assert.equal(requests.received({ reply: 1, ok: true }), false, 'a reply settles once');
  assert.equal(requests.received({ state: { phase: 'saved' } }), false, 'a push is no reply');
  assert.equal(requests.waiting, 0);
});

test('a closed comm fails what waits, with a sentence', async () => {
  const requests = new Requests(() => undefined, 10_000);
  const pending = requests.request('restore', { args: ['2'] });
  requests.closed('The kernel restarted or stopped before it answered.');
  const reply = await pending;
  assert.equal(reply.ok, false);
  assert.match(reply.text, /restarted or stopped/);
});

test('a kernel that never answers fails the request at the deadline', async () => {
  const requests = new Requests(() => undefined, 20);
  const reply = await requests.request('save');
  assert.equal(reply.ok, false);
  assert.match(reply.text, /did not answer within/);
  assert.equal(requests.waiting, 0);
});

test('a send that throws is a failed reply, not an exception', async () => {
  const requests = new Requests(() => {
    throw new Error('comm closed');
  }, 10_000);
  const reply = await requests.request('history');
  assert.equal(reply.ok, false);
  assert.match(reply.text, /could not be sent \(Error: comm closed\)/);
});

/**
 * Requests to the kernel's state comm and their replies, matched by id: pure,
 * so that it is tested without a kernel (see persistent_kernel/panel.py for the
 * other side).
 */

/** The kernel's answer to one request. */
export interface IReply {
  reply: number;
  ok: boolean;
  /** The sentences to show: the %persist magic's own for an action. */
  text: string;
  data: unknown;
}

interface IPending {
  resolve: (reply: IReply) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Sends requests through *send*, and settles each when its reply arrives. */
export class Requests {
  /**
   * @param send hands one message to the comm.
   * @param timeoutMs how long a reply may take: a save waits for its commit, as
   *   `%persist save` does, so this is minutes, not seconds.
   */
  constructor(
    private readonly send: (data: Record<string, unknown>) => void,
    private readonly timeoutMs = 10 * 60 * 1000
  ) {}

  /** Ask *request* with *extra* fields; never rejects: a failure is a reply with ok false. */
  request(request: string, extra: Record<string, unknown> = {}): Promise<IReply> {
    const id = ++this.last;
    return new Promise<IReply>(resolve => {
      const timer = setTimeout(() => {
        this.settle(id, {
          reply: id,
          ok: false,
          text: `The kernel did not answer within ${Math.round(this.timeoutMs / 1000)} s.`,
          data: null
        });
      }, this.timeoutMs);
      this.pending.set(id, { resolve, timer });
      try {
        this.send({ ...extra, id, request });
      } catch (error) {
        this.settle(id, {
          reply: id,
          ok: false,
          text: `The request could not be sent (${String(error)}).`,
          data: null
        });
      }
    });
  }

  /** A message from the kernel: true if it was the reply to a request of ours. */
  received(data: Record<string, unknown>): boolean {
    if (typeof data.reply !== 'number' || !this.pending.has(data.reply)) {
      return false;
    }
    this.settle(data.reply, {
      reply: data.reply,
      ok: Boolean(data.ok),
      text: typeof data.text === 'string' ? data.text : '',
      data: data.data ?? null
    });
    return true;
  }

  /** The comm closed (the kernel restarted or stopped): every request still waiting fails. */
  closed(why: string): void {
    for (const id of Array.from(this.pending.keys())) {
      this.settle(id, { reply: id, ok: false, text: why, data: null });
    }
  }

  /** How many requests wait for their reply. */
  get waiting(): number {
    return this.pending.size;
  }

  private settle(id: number, reply: IReply): void {
    const pending = this.pending.get(id);
    if (pending === undefined) {
      return;
    }
    this.pending.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(reply);
  }

  private last = 0;
  private readonly pending = new Map<number, IPending>();
}

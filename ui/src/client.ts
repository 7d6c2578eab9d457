/**
 * The comm to one kernel's state (persistent_kernel/panel.py), and the
 * controller that keeps one open for the notebook in front.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { IKernelState } from './format';
import { IReply, Requests } from './requests';

/** The comm target the kernel registers. */
export const TARGET = 'persistent_kernel.state';

/** What kernel_info says of a persistent kernel (PersistentKernel.implementation). */
export const IMPLEMENTATION = 'persistent-kernel';

/** One open state comm. */
export class StateClient {
  /**
   * A client for *kernel*, or null for a kernel that is not a persistent one
   * (a stock ipykernel, another language): nothing is opened on those.
   */
  static async connect(kernel: Kernel.IKernelConnection): Promise<StateClient | null> {
    const info = await kernel.info;
    if (info.implementation !== IMPLEMENTATION || kernel.isDisposed) {
      return null;
    }
    return new StateClient(kernel);
  }

  private constructor(kernel: Kernel.IKernelConnection) {
    this.comm = kernel.createComm(TARGET);
    this.requests = new Requests(data => {
      this.comm.send(data as any);
    });
    this.comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
      const data = (msg.content.data ?? {}) as Record<string, unknown>;
      if (this.requests.received(data)) {
        return;
      }
      if (data.state) {
        this.state = data.state as IKernelState;
        this._changed.emit(this.state);
      }
    };
    this.comm.onClose = () => {
      this.closed = true;
      this.requests.closed('The kernel restarted or stopped before it answered.');
      this._changed.emit(null);
    };
    this.comm.open({});
  }

  /** The last state pushed; null until the first arrives. */
  state: IKernelState | null = null;

  /** Whether the kernel closed the comm. */
  closed = false;

  /** A state arrived (null: the comm closed). */
  get changed(): ISignal<this, IKernelState | null> {
    return this._changed;
  }

  request(name: string, extra: Record<string, unknown> = {}): Promise<IReply> {
    if (this.closed) {
      return Promise.resolve({
        reply: 0,
        ok: false,
        text: 'The kernel is not running.',
        data: null
      });
    }
    return this.requests.request(name, extra);
  }

  dispose(): void {
    if (!this.closed && !this.comm.isDisposed) {
      this.closed = true;
      try {
        this.comm.close();
      } catch {
        // the kernel is gone already: nothing is left to close
      }
    }
    this.requests.closed('The notebook changed kernel.');
  }

  private readonly comm: Kernel.IComm;
  private readonly requests: Requests;
  private readonly _changed = new Signal<this, IKernelState | null>(this);
}

/**
 * Keeps a client open for the session in front: opens it when the kernel
 * starts or restarts, closes it when the notebook changes kernel.
 */
export class Controller {
  /** The client of the notebook in front; null when its kernel is not a persistent one. */
  client: StateClient | null = null;

  /** The notebook in front's kernel is restarting (its state comes back). */
  restarting = false;

  /** The client, its state, or the notebook in front changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Follow *context* (the notebook in front); null: none is. */
  follow(context: ISessionContext | null): void {
    if (context === this.context) {
      return;
    }
    if (this.context) {
      this.context.kernelChanged.disconnect(this.onKernelChanged, this);
      this.context.statusChanged.disconnect(this.onStatus, this);
    }
    this.context = context;
    if (context) {
      context.kernelChanged.connect(this.onKernelChanged, this);
      context.statusChanged.connect(this.onStatus, this);
    }
    void this.reconnect();
  }

  private onKernelChanged(): void {
    void this.reconnect();
  }

  private onStatus(_: ISessionContext, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting') {
      this.restarting = true;
      this.drop();
    } else if ((status === 'idle' || status === 'busy') && this.restarting && this.client === null) {
      void this.reconnect(); // once per restart: a stock kernel is asked only once
    }
  }

  private drop(): void {
    if (this.client) {
      this.client.changed.disconnect(this.onState, this);
      this.client.dispose();
      this.client = null;
    }
    this._changed.emit();
  }

  private async reconnect(): Promise<void> {
    const attempt = ++this.attempts;
    this.drop();
    const kernel = this.context?.session?.kernel ?? null;
    if (kernel === null) {
      return;
    }
    let client: StateClient | null = null;
    try {
      client = await StateClient.connect(kernel);
    } catch (error) {
      console.warn('persistent-kernel: the kernel state cannot be shown', error);
    }
    if (attempt !== this.attempts) {
      client?.dispose(); // another notebook came in front meanwhile
      return;
    }
    this.client = client;
    this.restarting = false;
    if (client) {
      client.changed.connect(this.onState, this);
    }
    this._changed.emit();
  }

  private onState(_: StateClient, state: IKernelState | null): void {
    if (state !== null) {
      this.restarting = false;
    }
    this._changed.emit();
  }

  private context: ISessionContext | null = null;
  private attempts = 0;
  private readonly _changed = new Signal<this, void>(this);
}

import { ErrorCodes, TunnelError } from "../errors.js";
import { countDown, countUp } from "./counts.js";

/**
 * Counts public ports against `maxPublicPorts` (every listener bound, held ones included) and
 * `maxPublicPortsPerAddress` (ports of connected clients, per remote address). Without these one
 * authenticated client opening `maxServicesPerClient` ports on each of hundreds of sessions bound
 * ~20,000 listeners: file descriptors ran out and a healthy tunnel's visitors were refused.
 *
 * Listeners already bound are the server's to count (`bound` below); this keeps what it cannot
 * see: listeners promised to admissions still binding them, and who holds how many ports.
 */
export class PortBudget {
  /** New listeners promised to admissions under way, not bound yet. */
  private promised = 0;
  /** Ports of connected clients (and of admissions under way), per remote address. */
  private readonly byAddress = new Map<string, number>();
  private readonly claims = new Map<object, { address: string; ports: number }>();

  constructor(
    readonly maxPorts: number,
    readonly maxPerAddress: number,
  ) {}

  /**
   * Why a client at `address` may not have `ports` ports, `growth` more listeners than are bound
   * now (negative when it gives back more than it binds), or null. `bound` listeners are bound,
   * `spare` of them only held on lease for others: those would close to make room.
   */
  refusal(
    address: string,
    ports: number,
    growth: number,
    bound: number,
    spare: number,
  ): TunnelError | null {
    const inUse = bound + this.promised;
    if (inUse - spare + growth > this.maxPorts) {
      return new TunnelError(
        ErrorCodes.TOO_MANY_PORTS,
        `no room for ${growth} more public ports: ${inUse} of ${this.maxPorts} in use, ${spare} of them held on lease (maxPublicPorts)`,
      );
    }
    const fromHere = this.byAddress.get(address) ?? 0;
    if (fromHere + ports > this.maxPerAddress) {
      return new TunnelError(
        ErrorCodes.TOO_MANY_PORTS,
        `clients from ${address} already have ${fromHere} public ports; ${ports} more would pass ${this.maxPerAddress} (maxPublicPortsPerAddress)`,
      );
    }
    return null;
  }

  /** Listeners bound plus promised, to compare with `maxPorts`. */
  inUse(bound: number): number {
    return bound + this.promised;
  }

  /** `owner` holds `ports` ports for `address` until free(owner); `fresh` listeners are promised. */
  take(owner: object, address: string, ports: number, fresh: number): void {
    this.free(owner);
    this.claims.set(owner, { address, ports });
    countUp(this.byAddress, address, ports);
    this.promised += fresh;
  }

  /** `count` promised listeners are bound now (the server counts them) or will not be. */
  unpromise(count: number): void {
    this.promised -= count;
  }

  /** Gives back what `owner` holds; again is a no-op. */
  free(owner: object): void {
    const claim = this.claims.get(owner);
    if (!claim) return;
    this.claims.delete(owner);
    countDown(this.byAddress, claim.address, claim.ports);
  }
}

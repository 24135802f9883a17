// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.X86.Jit;

/// <summary>
/// One translated block (or the record that the instruction at its address cannot be translated): keyed by guest-physical
/// address, RIP and code size, and valid while guest memory still holds the bytes it was made from (compared on entry,
/// as the interpreter's block cache does, so a write by anyone, on any path, is seen at the next entry).
/// </summary>
internal sealed class JitBlock
{
    /// <summary>Guest-physical address of the first instruction.</summary>
    public ulong Gpa;
    /// <summary>RIP of the first instruction (IP-relative operands were resolved against it).</summary>
    public ulong Rip;
    /// <summary>16, 32 or 64.</summary>
    public int Bitness;
    /// <summary>Guest bytes covered (all in one page).</summary>
    public int ByteLen;
    /// <summary>Guest instructions translated (0: none could be; the interpreter runs this address).</summary>
    public int Count;
    /// <summary>Highest IP the block may leave to (its end or a branch target), checked against the CS limit outside 64-bit mode.</summary>
    public ulong MaxIp;
    /// <summary>Host entry point in the code cache's executable view.</summary>
    public nint Entry;
    /// <summary>Where another block's code may jump in (64-bit blocks only, else 0): compares the guest bytes with
    /// <see cref="Bytes"/> and goes on into the body, or leaves to the dispatcher with RIP at the block.</summary>
    public nint ChainEntry;
    /// <summary>The code cache generation the block's code belongs to (<see cref="CodeCache.Flushes"/>).</summary>
    public long Generation;
    /// <summary>The guest bytes the block was made from.</summary>
    public readonly byte[] Bytes = new byte[Translator.MaxInstructions * 15];
}

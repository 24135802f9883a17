// SPDX-License-Identifier: BSD-2-Clause
using Xunit;
using System.Buffers.Binary;
using Hyve.Virtio;
using Hyve.Vmm;

namespace Hyve.Tests.Virtio;

/// <summary>The split virtqueue against well-formed and hostile rings (virtio 1.2 section 2.7).</summary>
public sealed class VirtqueueTests : IDisposable
{
    private const ushort Size = 8;
    private const ulong DescAt = 0x1000, AvailAt = 0x2000, UsedAt = 0x3000, Buf = 0x10000;
    private readonly GuestMemory _mem = new(1ul << 20);
    private readonly Virtqueue _q;
    private ushort _avail;

    public VirtqueueTests()
    {
        _q = new Virtqueue(_mem, 0, Size) { Desc = DescAt, Driver = AvailAt, Device = UsedAt, Enabled = true, IndirectDesc = true };
    }

    public void Dispose() => _mem.Dispose();

    private Span<byte> M(ulong gpa, int len)
    {
        Assert.True(_mem.TryGetSpan(gpa, len, MemProt.Read, out var s));
        return s;
    }

    private void D(ulong table, int i, ulong addr, uint len, ushort flags, ushort next = 0)
    {
        var d = M(table + (ulong)(16 * i), 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    private void Avail(ushort head)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(M(AvailAt + 4 + (ulong)(2 * (_avail % Size)), 2), head);
        _avail++;
        BinaryPrimitives.WriteUInt16LittleEndian(M(AvailAt + 2, 2), _avail);
    }

    private string Broken()
    {
        Assert.Equal(PopResult.Broken, _q.Pop());
        return _q.Error!;
    }

    [Fact]
    public void WellFormedChainIsFlattenedInOrder()
    {
        D(DescAt, 0, Buf, 16, Virtqueue.DescNext, 1);
        D(DescAt, 1, Buf + 0x100, 512, Virtqueue.DescNext | Virtqueue.DescWrite, 2);
        D(DescAt, 2, Buf + 0x400, 1, Virtqueue.DescWrite);
        Avail(0);
        Assert.Equal(PopResult.Chain, _q.Pop());
        var c = _q.Chain;
        Assert.Equal(3, c.Count);
        Assert.Equal(1, c.FirstWritable);
        Assert.Equal(16, c.ReadableBytes);
        Assert.Equal(513, c.WritableBytes);
        Assert.Equal(PopResult.Empty, _q.Pop());
        Assert.True(_q.Push(c.Head, 513));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(M(UsedAt + 2, 2)));
        Assert.Equal(513u, BinaryPrimitives.ReadUInt32LittleEndian(M(UsedAt + 8, 4)));
    }

    [Fact]
    public void IndirectTableIsFollowed()
    {
        const ulong table = 0x8000;
        D(table, 0, Buf, 16, Virtqueue.DescNext, 1);
        D(table, 1, Buf + 0x200, 64, Virtqueue.DescWrite);
        D(DescAt, 3, table, 32, Virtqueue.DescIndirect);
        Avail(3);
        Assert.Equal(PopResult.Chain, _q.Pop());
        Assert.Equal(2, _q.Chain.Count);
        Assert.Equal((ushort)3, _q.Chain.Head);
    }

    [Fact]
    public void DescriptorLoopIsCaught()
    {
        D(DescAt, 0, Buf, 16, Virtqueue.DescNext, 1);
        D(DescAt, 1, Buf, 16, Virtqueue.DescNext, 0);
        Avail(0);
        Assert.Contains("longer than the queue", Broken());
    }

    [Fact]
    public void SelfLoopIsCaught()
    {
        D(DescAt, 5, Buf, 16, Virtqueue.DescNext, 5);
        Avail(5);
        Assert.Contains("longer than the queue", Broken());
    }

    [Fact]
    public void NextIndexOutOfRangeIsCaught()
    {
        D(DescAt, 0, Buf, 16, Virtqueue.DescNext, Size);
        Avail(0);
        Assert.Contains("next descriptor index", Broken());
    }

    [Fact]
    public void HeadOutOfRangeIsCaught()
    {
        Avail(Size + 3);
        Assert.Contains("head descriptor index", Broken());
    }

    [Fact]
    public void AvailableIndexRunningAheadIsCaught()
    {
        BinaryPrimitives.WriteUInt16LittleEndian(M(AvailAt + 2, 2), Size + 1);
        Assert.Contains("ran more than the queue size ahead", Broken());
    }

    [Fact]
    public void ZeroLengthIsCaught()
    {
        D(DescAt, 0, Buf, 0, 0);
        Avail(0);
        Assert.Contains("zero-length", Broken());
    }

    [Fact]
    public void HugeLengthIsCaught()
    {
        D(DescAt, 0, Buf, 0xffff_ffff, 0);
        Avail(0);
        Assert.Contains("too large", Broken());
    }

    [Theory]
    [InlineData(0xff000ul)]        // runs past the end of the 1 MiB of RAM
    [InlineData(0xfee0_0000ul)]    // the local APIC's page: MMIO, not RAM
    [InlineData(0xffff_ffff_ffff_f000ul)] // wraps
    public void BufferOutsideRamIsCaught(ulong addr)
    {
        D(DescAt, 0, addr, 0x2000, 0);
        Avail(0);
        Assert.Contains("outside guest RAM", Broken());
    }

    [Fact]
    public void WritableBufferInRomIsCaught()
    {
        var rom = _mem.CreateDevMem("rom", 0x10000);
        _mem.Map(rom, 0, 0x1_0000_0000 - 0x10000, 0x10000, MemProt.Read);
        D(DescAt, 0, 0x1_0000_0000 - 0x10000, 16, 0, 0); // readable from ROM is fine
        Avail(0);
        Assert.Equal(PopResult.Chain, _q.Pop());
        D(DescAt, 1, 0x1_0000_0000 - 0x10000, 16, Virtqueue.DescWrite);
        Avail(1);
        Assert.Contains("writable guest RAM", Broken());
    }

    [Fact]
    public void UsedRingInRomIsRefused()
    {
        var rom = _mem.CreateDevMem("rom", 0x10000);
        _mem.Map(rom, 0, 0x1_0000_0000 - 0x10000, 0x10000, MemProt.Read);
        _q.Device = 0x1_0000_0000 - 0x10000;
        Assert.False(_q.CheckRings());
        Assert.Contains("device ring", _q.Error);
        Assert.False(_q.Push(0, 0));
    }

    [Fact]
    public void NestedIndirectIsCaught()
    {
        const ulong table = 0x8000;
        D(table, 0, 0x9000, 16, Virtqueue.DescIndirect);
        D(DescAt, 0, table, 16, Virtqueue.DescIndirect);
        Avail(0);
        Assert.Contains("inside an indirect table", Broken());
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(24u)]
    [InlineData(16u * 9)] // more entries than the queue size
    public void BadIndirectLengthIsCaught(uint len)
    {
        D(DescAt, 0, 0x8000, len, Virtqueue.DescIndirect);
        Avail(0);
        Assert.Contains("indirect table length", Broken());
    }

    [Fact]
    public void IndirectWithoutTheFeatureIsCaught()
    {
        _q.IndirectDesc = false;
        D(DescAt, 0, 0x8000, 16, Virtqueue.DescIndirect);
        Avail(0);
        Assert.Contains("without VIRTIO_F_INDIRECT_DESC", Broken());
    }

    [Fact]
    public void IndirectLoopIsCaught()
    {
        const ulong table = 0x8000;
        D(table, 0, Buf, 16, Virtqueue.DescNext, 1);
        D(table, 1, Buf, 16, Virtqueue.DescNext, 0);
        D(DescAt, 0, table, 32, Virtqueue.DescIndirect);
        Avail(0);
        Assert.Contains("longer than the queue", Broken());
    }

    [Fact]
    public void ReadableAfterWritableIsCaught()
    {
        D(DescAt, 0, Buf, 16, Virtqueue.DescNext | Virtqueue.DescWrite, 1);
        D(DescAt, 1, Buf, 16, 0);
        Avail(0);
        Assert.Contains("device-readable descriptor after", Broken());
    }

    [Fact]
    public void BrokenQueueStaysBrokenUntilReset()
    {
        D(DescAt, 0, Buf, 0, 0);
        Avail(0);
        Broken();
        D(DescAt, 0, Buf, 16, 0);
        Assert.Equal(PopResult.Broken, _q.Pop());
        _q.Reset();
        Assert.Null(_q.Error);
        Assert.False(_q.Enabled);
    }

    [Fact]
    public void EventIdxSuppressesInterruptsUntilUsedEventIsPassed()
    {
        _q.EventIdx = true;
        // used_event (after the avail ring) = 2: interrupt when the used index moves past 2.
        BinaryPrimitives.WriteUInt16LittleEndian(M(AvailAt + 4 + 2 * Size, 2), 2);
        D(DescAt, 0, Buf, 16, 0);
        for (int i = 0; i < 4; i++)
        {
            ushort old = _q.UsedIdx;
            _q.Push(0, 0);
            Assert.Equal(i == 2, _q.NeedsInterrupt(old));
        }
    }

    [Fact]
    public void NoInterruptFlagSuppressesWithoutEventIdx()
    {
        BinaryPrimitives.WriteUInt16LittleEndian(M(AvailAt, 2), Virtqueue.AvailNoInterrupt);
        ushort old = _q.UsedIdx;
        _q.Push(0, 0);
        Assert.False(_q.NeedsInterrupt(old));
        BinaryPrimitives.WriteUInt16LittleEndian(M(AvailAt, 2), 0);
        old = _q.UsedIdx;
        _q.Push(0, 0);
        Assert.True(_q.NeedsInterrupt(old));
    }

    [Fact]
    public void ArmNotificationPublishesAvailEvent()
    {
        _q.EventIdx = true;
        D(DescAt, 0, Buf, 16, 0);
        Avail(0);
        Assert.Equal(PopResult.Chain, _q.Pop());
        Assert.False(_q.ArmNotification());
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(M(UsedAt + 4 + 8 * Size, 2)));
        Avail(0);
        Assert.True(_q.ArmNotification());
    }
}

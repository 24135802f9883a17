// SPDX-License-Identifier: BSD-2-Clause
using Xunit;
using System.Buffers.Binary;
using Hyve.Virtio;

namespace Hyve.Tests.Virtio;

/// <summary>virtio-blk requests (virtio 1.2 section 5.2.6) against a temporary raw image.</summary>
public sealed class VirtioBlockTests : IDisposable
{
    private const ulong Modern = VirtioPciDevice.FeatureVersion1 | VirtioPciDevice.FeatureEventIdx | VirtioPciDevice.FeatureIndirectDesc
        | VirtioBlock.FeatureFlush | VirtioBlock.FeatureDiscard | VirtioBlock.FeatureWriteZeroes;
    private const ulong Hdr = VirtioTestDriver.DataBase, Status = Hdr + 0x100, Data = Hdr + 0x1000;
    private readonly string _image = Path.Combine(Path.GetTempPath(), $"hyve-vblk-{Guid.NewGuid():N}.img");
    private VirtioTestDriver? _drv;
    private ushort _used;

    public VirtioBlockTests()
    {
        var bytes = new byte[1 << 20];
        for (int i = 0; i < bytes.Length; i++) bytes[i] = (byte)(i / 512);
        File.WriteAllBytes(_image, bytes);
    }

    public void Dispose()
    {
        _drv?.Dispose();
        File.Delete(_image);
    }

    private VirtioTestDriver Start(params (string, string)[] conf)
    {
        _drv = new VirtioTestDriver("virtio-blk", null, [("path", _image), .. conf]);
        Assert.True(_drv.Negotiate(Modern));
        _drv.SetupQueue(0, 64);
        _drv.DriverOk();
        return _drv;
    }

    private (byte Status, uint Written) Request(uint type, ulong sector, params (ulong Addr, uint Len, bool Write)[] data)
    {
        var h = _drv!.Mem(Hdr, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], sector);
        _drv.Mem(Status, 1)[0] = 0xee;
        _drv.Offer(0, 64, [(Hdr, 16, false), .. data, (Status, 1, true)]);
        _drv.NotifyAndWait(0, ++_used);
        return (_drv.Mem(Status, 1)[0], _drv.UsedElem(0, _used - 1, 64).Len);
    }

    [Fact]
    public void ConfigurationReportsCapacityAndFeatures()
    {
        var d = Start();
        Assert.Equal(2048ul, d.Read(VirtioPciDevice.DeviceOffset, 8));       // 1 MiB in 512-byte sectors
        Assert.Equal(512ul, d.Read(VirtioPciDevice.DeviceOffset + 20, 4));   // blk_size
        Assert.Equal(0x1001, d.Device.DeviceId);
        Assert.Equal(0ul, d.Features() & VirtioBlock.FeatureRo);
    }

    [Fact]
    public void ReadReturnsTheImageAndWriteReachesIt()
    {
        Start();
        var (st, written) = Request(VirtioBlock.TypeIn, 3, (Data, 1024, true));
        Assert.Equal(VirtioBlock.StatusOk, st);
        Assert.Equal(1025u, written);
        Assert.Equal(3, _drv!.Mem(Data, 1)[0]);
        Assert.Equal(4, _drv.Mem(Data + 512, 1)[0]);

        _drv.Mem(Data, 512).Fill(0xa5);
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeOut, 10, (Data, 512, false)).Status);
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeFlush, 0).Status);
        var file = File.ReadAllBytes(_image);
        Assert.All(file.AsSpan(10 * 512, 512).ToArray(), b => Assert.Equal(0xa5, b));
        Assert.Equal(11, file[11 * 512]);
    }

    [Fact]
    public void HeaderAndDataSplitAcrossOddDescriptorsStillWork()
    {
        var d = Start();
        // The header in two pieces (8 + 8 bytes) and the data in three unaligned pieces.
        var h = d.Mem(Hdr, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(h, VirtioBlock.TypeIn);
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], 5);
        d.Offer(0, 64, (Hdr, 8, false), (Hdr + 8, 8, false), (Data + 1, 100, true), (Data + 0x801, 412, true), (Data + 0xc03, 512, true), (Status, 1, true));
        d.NotifyAndWait(0, ++_used);
        Assert.Equal(VirtioBlock.StatusOk, d.Mem(Status, 1)[0]);
        Assert.Equal(5, d.Mem(Data + 1, 1)[0]);
        Assert.Equal(5, d.Mem(Data + 0x801 + 411, 1)[0]);
        Assert.Equal(6, d.Mem(Data + 0xc03, 1)[0]);
    }

    [Fact]
    public void ShortMisalignedAndOutOfRangeRequestsFailWithIoErr()
    {
        Start();
        Assert.Equal(VirtioBlock.StatusIoErr, Request(VirtioBlock.TypeIn, 0, (Data, 100, true)).Status);       // not a sector multiple
        Assert.Equal(VirtioBlock.StatusIoErr, Request(VirtioBlock.TypeIn, 2047, (Data, 1024, true)).Status);   // runs past the end
        Assert.Equal(VirtioBlock.StatusIoErr, Request(VirtioBlock.TypeIn, ulong.MaxValue / 256, (Data, 512, true)).Status); // overflows
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeIn, 2047, (Data, 512, true)).Status);       // the last sector
        Assert.Equal(VirtioBlock.StatusUnsupported, Request(99, 0).Status);
        Assert.Equal(0, _drv!.Status & VirtioPciDevice.StatusNeedsReset);
    }

    [Fact]
    public void RequestWithoutHeaderNeedsReset()
    {
        var d = Start();
        d.Offer(0, 64, (Hdr, 8, false), (Status, 1, true));
        d.Notify(0);
        Assert.True(VirtioTestDriver.WaitFor(() => (d.Status & VirtioPciDevice.StatusNeedsReset) != 0));
    }

    [Fact]
    public void GetIdReturnsTheSerial()
    {
        Start(("ser", "DISK-42"));
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeGetId, 0, (Data, 20, true)).Status);
        Assert.Equal("DISK-42", System.Text.Encoding.ASCII.GetString(_drv!.Mem(Data, 20)).TrimEnd('\0'));
    }

    [Fact]
    public void ReadOnlyDiskFailsWritesAndKeepsItsBytes()
    {
        var d = Start(("ro", "true"));
        Assert.NotEqual(0ul, d.Features() & VirtioBlock.FeatureRo);
        d.Mem(Data, 512).Fill(0x5a);
        Assert.Equal(VirtioBlock.StatusIoErr, Request(VirtioBlock.TypeOut, 1, (Data, 512, false)).Status);
        Assert.Equal(1, File.ReadAllBytes(_image)[512]);
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeIn, 1, (Data, 512, true)).Status);
    }

    [Fact]
    public void WriteZeroesAndDiscardZeroTheRange()
    {
        var d = Start();
        var seg = d.Mem(Data, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(seg, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(seg[8..], 8);
        BinaryPrimitives.WriteUInt32LittleEndian(seg[12..], 1); // unmap allowed
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeWriteZeroes, 0, (Data, 16, false)).Status);
        var file = File.ReadAllBytes(_image);
        Assert.All(file.AsSpan(16 * 512, 8 * 512).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(24, file[24 * 512]);
        Assert.Equal(VirtioBlock.StatusUnsupported, Request(VirtioBlock.TypeDiscard, 0, (Data, 16, false)).Status); // unmap flag on a discard
        BinaryPrimitives.WriteUInt32LittleEndian(seg[12..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(seg, 40);
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeDiscard, 0, (Data, 16, false)).Status);
        BinaryPrimitives.WriteUInt64LittleEndian(seg, 4096); // past the end
        Assert.Equal(VirtioBlock.StatusIoErr, Request(VirtioBlock.TypeDiscard, 0, (Data, 16, false)).Status);
    }

    [Fact]
    public void MissingDiskIsAHostError()
    {
        var e = Assert.Throws<HostConfigException>(() => new VirtioTestDriver("virtio-blk", null, ("path", "/nonexistent/disk.img")));
        Assert.Contains("/nonexistent/disk.img", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Theory]
    [InlineData("sectorsize", "1000")]
    [InlineData("sectorsize", "4096/512")]
    [InlineData("ser", "012345678901234567890")]
    [InlineData("ro", "maybe")]
    public void BadOptionsAreHostErrors(string key, string value) =>
        Assert.Throws<HostConfigException>(() => new VirtioTestDriver("virtio-blk", null, ("path", _image), (key, value)));

    [Fact]
    public void SectorSizeOptionIsReported()
    {
        var d = Start(("sectorsize", "4096"));
        Assert.Equal(4096ul, d.Read(VirtioPciDevice.DeviceOffset + 20, 4));
        Assert.Equal(VirtioBlock.StatusIoErr, Request(VirtioBlock.TypeIn, 1, (Data, 4096, true)).Status); // not 4 KiB aligned
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeIn, 8, (Data, 4096, true)).Status);
    }
}

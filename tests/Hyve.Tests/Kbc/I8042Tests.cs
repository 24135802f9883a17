// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Devices;
using Hyve.Tests.Io2;
using Xunit;

namespace Hyve.Tests.Kbc;

/// <summary>The 8042 controller and its PS/2 devices as the IBM PS/2 technical reference and Linux's i8042 driver use them.</summary>
public class I8042Tests
{
    private readonly RecordingIrqLines _irq = new();
    private int _resets;
    private readonly I8042 _kbc;

    public I8042Tests() => _kbc = new I8042(_irq, () => _resets++);

    private byte Status() => (byte)_kbc.PortRead(I8042.CommandPort, 1);
    private void Command(byte c) => _kbc.PortWrite(I8042.CommandPort, 1, c);
    private void Data(byte d) => _kbc.PortWrite(I8042.DataPort, 1, d);

    // What a driver does: wait for OBF, then read the data port.
    private byte Read()
    {
        Assert.True((Status() & 0x01) != 0, "output buffer empty");
        return (byte)_kbc.PortRead(I8042.DataPort, 1);
    }

    private List<byte> Drain()
    {
        var bytes = new List<byte>();
        while ((Status() & 0x01) != 0) bytes.Add((byte)_kbc.PortRead(I8042.DataPort, 1));
        return bytes;
    }

    [Fact]
    public void SelfTestAnswers0x55AndInterfaceTestsReportNoError()
    {
        Command(0xAA);
        Assert.Equal(0x55, Read());
        Command(0xAB);
        Assert.Equal(0x00, Read());
        Command(0xA9);
        Assert.Equal(0x00, Read());
        Assert.Equal(0x04, Status() & 0x04); // system flag
    }

    [Fact]
    public void TheCommandByteReadsBackWhatWasWritten()
    {
        Command(0x20);
        Assert.Equal(0x45, Read()); // keyboard interrupt, system flag, translation
        Command(0x60);
        Data(0x47);
        Command(0x20);
        Assert.Equal(0x47, Read());
        Command(0xAD); // disable the keyboard: command byte bit 4
        Command(0x20);
        Assert.Equal(0x57, Read());
    }

    [Fact]
    public void StatusBitA2TellsWhetherTheLastWriteWasACommand()
    {
        Command(0x60);
        Assert.Equal(0x08, Status() & 0x08);
        Data(0x45);
        Assert.Equal(0x00, Status() & 0x08);
    }

    [Fact]
    public void KeyboardResetAcknowledgesAndPassesItsSelfTest()
    {
        Data(0xFF);
        Assert.Equal(new byte[] { 0xFA, 0xAA }, Drain());
        Data(0xF2);
        Assert.Equal(new byte[] { 0xFA, 0xAB, 0x83 }, Drain());
        Data(0xED); // set LEDs: the argument is acknowledged too
        Data(0x07);
        Assert.Equal(new byte[] { 0xFA, 0xFA }, Drain());
        Data(0xEE);
        Assert.Equal(new byte[] { 0xEE }, Drain());
        Data(0x12); // not a command
        Assert.Equal(new byte[] { 0xFE }, Drain());
    }

    [Fact]
    public void EveryQueuedByteRaisesItsOwnInterruptEdge()
    {
        // Linux's i8042 handler reads one byte per interrupt: each byte behind the first needs a new rising edge.
        Data(0xF2); // identify: 0xFA, 0xAB, 0x83
        Assert.Equal(1, _irq.IsaAsserts(1));
        Assert.Equal(new byte[] { 0xFA, 0xAB, 0x83 }, Drain());
        Assert.Equal(3, _irq.IsaAsserts(1));
        Assert.Equal(0, _irq.IsaLevel[1]);
        Command(0xD4);
        Data(0xFF); // mouse reset: 0xFA, 0xAA, 0x00 on IRQ 12 (enable it in the command byte first)
        int before = _irq.IsaAsserts(12);
        Command(0x60);
        Data(0x47);
        Assert.Equal(new byte[] { 0xFA, 0xAA, 0x00 }, Drain());
        Assert.Equal(before + 3, _irq.IsaAsserts(12));
    }

    [Fact]
    public void MouseBytesArriveWithTheAuxiliaryStatusBit()
    {
        Command(0xD4);
        Data(0xFF);
        Assert.Equal(0x21, Status() & 0x21);
        Assert.Equal(new byte[] { 0xFA, 0xAA, 0x00 }, Drain());
        Command(0xD4);
        Data(0xF3); // sample rate 40
        Command(0xD4);
        Data(40);
        Command(0xD4);
        Data(0xE9); // status: ACK, flags, resolution, rate
        Assert.Equal(new byte[] { 0xFA, 0xFA, 0xFA, 0x00, 0x02, 40 }, Drain());
        Command(0xD3); // loop a byte back as mouse data (Linux's AUX port check)
        Data(0x5A);
        Assert.Equal(0x20, Status() & 0x20);
        Assert.Equal(0x5A, Read());
    }

    [Fact]
    public void Irq1FollowsKeyboardDataAndIrq12MouseDataWhenTheCommandByteEnablesThem()
    {
        Data(0xF4);
        Assert.Equal(1, _irq.IsaLevel[1]);
        Read();
        Assert.Equal(0, _irq.IsaLevel[1]);
        Command(0xD3);
        Data(0x01);
        Assert.Equal(0, _irq.IsaLevel[12]); // command byte bit 1 is clear
        Read();
        Command(0x60);
        Data(0x47);
        Command(0xD3);
        Data(0x01);
        Assert.Equal(1, _irq.IsaLevel[12]);
        Read();
        Assert.Equal(0, _irq.IsaLevel[12]);
    }

    [Fact]
    public void PulsingOutputPortBit0OrWritingItLowResetsTheMachine()
    {
        Command(0xFF); // pulses nothing
        Assert.Equal(0, _resets);
        Command(0xFE);
        Assert.Equal(1, _resets);
        Command(0xD0);
        Assert.Equal(0x03, Read() & 0x03); // reset line high, A20 on
        Command(0xD1);
        Data(0x03);
        Assert.Equal(1, _resets);
        Command(0xD1);
        Data(0x02);
        Assert.Equal(2, _resets);
    }

    [Fact]
    public void AnEmptyBufferReadsItsLastByteAgainAndResetEmptiesIt()
    {
        Command(0xAA);
        Assert.Equal(0x55, Read());
        Assert.Equal(0x55u, _kbc.PortRead(I8042.DataPort, 1));
        Data(0xFF);
        _kbc.Reset();
        Assert.Equal(0, Status() & 0x01);
        Assert.Equal(0, _irq.IsaLevel[1]);
    }

    [Fact]
    public void SavedStateRestoresPendingBytesAndTheInterruptTheyRaise()
    {
        Data(0xF2); // ACK, 0xAB, 0x83 waiting
        Assert.Equal(0xFA, Read());
        var saved = StateCopy.Save(_kbc);
        var lines = new RecordingIrqLines();
        var other = new I8042(lines, () => { });
        StateCopy.Load(other, saved);
        Assert.Equal(1, lines.IsaLevel[1]);
        Assert.Equal(0xABu, other.PortRead(I8042.DataPort, 1));
        Assert.Equal(0x83u, other.PortRead(I8042.DataPort, 1));
        Assert.Equal(0, lines.IsaLevel[1]);
        Assert.Throws<InvalidDataException>(() => StateCopy.Load(other, saved with { Version = 3 }));
        Assert.Throws<InvalidDataException>(() => StateCopy.Load(other, saved with { Data = saved.Data[..3] }));
    }
}

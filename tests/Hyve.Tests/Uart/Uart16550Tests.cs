// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Devices;
using Xunit;

namespace Hyve.Tests.Uart;

public class Uart16550Tests
{
    private const ushort Com1 = 0x3F8;
    private const int RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

    private sealed class Rig
    {
        public readonly MemoryConsoleBackend Backend = new();
        public readonly List<bool> Irq = [];
        public readonly Uart16550 Uart;

        public Rig() => Uart = new Uart16550(Com1, Irq.Add, Backend);

        public byte In(int reg) => (byte)Uart.PortRead((ushort)(Com1 + reg), 1);
        public void Out(int reg, int value) => Uart.PortWrite((ushort)(Com1 + reg), 1, (uint)value);
        public bool Level => Uart.IrqAsserted;
    }

    [Fact]
    public void ResetValuesMatchTheDatasheet()
    {
        var r = new Rig();
        Assert.Equal(0x00, r.In(IER));
        Assert.Equal(0x01, r.In(IIR));
        Assert.Equal(0x00, r.In(LCR));
        Assert.Equal(0x00, r.In(MCR));
        Assert.Equal(0x60, r.In(LSR)); // THRE | TEMT
        Assert.Equal(0xB0, r.In(MSR)); // DCD | DSR | CTS, no deltas
        Assert.Empty(r.Irq);
    }

    [Fact]
    public void DivisorLatchIsReachedOnlyWithDlab()
    {
        var r = new Rig();
        Assert.Equal(12, r.Uart.Divisor); // 9600 baud from 1.8432 MHz
        r.Out(LCR, 0x83);                  // DLAB, 8N1
        r.Out(DLL, 0x01);
        r.Out(DLM, 0x02);
        Assert.Equal(0x01, r.In(DLL));
        Assert.Equal(0x02, r.In(DLM));
        Assert.Equal(0x0201, r.Uart.Divisor);
        Assert.Empty(r.Backend.Output);    // DLL write did not transmit
        r.Out(LCR, 0x03);
        Assert.Equal(0x03, r.In(LCR));     // word length etc. are kept
        Assert.Equal(0x00, r.In(IER));     // IER untouched by the DLM write
        r.Out(THR, 'A');
        Assert.Equal("A", r.Backend.OutputText);
    }

    [Fact]
    public void TransmitGoesToTheBackendAndTheTransmitterIsAlwaysEmpty()
    {
        var r = new Rig();
        foreach (char c in "hi\r\n") r.Out(THR, c);
        Assert.Equal("hi\r\n", r.Backend.OutputText);
        Assert.Equal(0x60, r.In(LSR) & 0x60);
    }

    [Fact]
    public void ScratchAndMaskedRegisters()
    {
        var r = new Rig();
        r.Out(SCR, 0x5A);
        Assert.Equal(0x5A, r.In(SCR));
        r.Out(IER, 0xFF);
        Assert.Equal(0x0F, r.In(IER)); // 4 bits
        r.Out(MCR, 0xFF);
        Assert.Equal(0x1F, r.In(MCR)); // 5 bits
        r.Out(LSR, 0x00);              // read-only
        Assert.Equal(0x60, r.In(LSR) & 0x60);
    }

    [Fact]
    public void ReceivedByteSetsDataReadyUntilRead()
    {
        var r = new Rig();
        r.Backend.Inject("A");
        Assert.Equal(0x61, r.In(LSR));
        Assert.Equal((byte)'A', r.In(RBR));
        Assert.Equal(0x60, r.In(LSR));
        Assert.Equal((byte)'A', r.In(RBR)); // RBR holds its last value
    }

    [Fact]
    public void WithoutFifoOneByteIsHeldAndTheRestWaitsInTheBackend()
    {
        var r = new Rig();
        r.Backend.Inject("ABC");
        Assert.Equal(2, r.Backend.PendingInput);
        Assert.Equal((byte)'A', r.In(RBR));
        Assert.Equal((byte)'B', r.In(RBR));
        Assert.Equal((byte)'C', r.In(RBR));
        Assert.Equal(0, r.Backend.PendingInput);
        Assert.Equal(0, r.In(LSR) & 1);
    }

    [Fact]
    public void FifoHoldsSixteenBytesAndNothingIsLost()
    {
        var r = new Rig();
        r.Out(FCR, 0x01);
        Assert.Equal(0xC0, r.In(IIR) & 0xC0);
        var text = "abcdefghijklmnopqrstuvwxyz";
        r.Backend.Inject(text);
        Assert.Equal(text.Length - 16, r.Backend.PendingInput);
        var got = new List<char>();
        while ((r.In(LSR) & 1) != 0) got.Add((char)r.In(RBR));
        Assert.Equal(text, new string([.. got]));
        Assert.Equal(0, r.In(LSR) & 0x02); // no overrun: flow control held the rest back
    }

    [Fact]
    public void FcrResetAndModeChangeEmptyTheFifo()
    {
        var r = new Rig();
        r.Out(FCR, 0x01);
        r.Out(MCR, 0x10); // loopback, so the backend does not refill
        r.Out(THR, 'x');
        r.Out(THR, 'y');
        Assert.Equal(1, r.In(LSR) & 1);
        r.Out(FCR, 0x03); // enable + RX reset
        Assert.Equal(0, r.In(LSR) & 1);
        r.Out(THR, 'z');
        r.Out(FCR, 0x00); // back to 16450 mode
        Assert.Equal(0, r.In(LSR) & 1);
        Assert.Equal(0x00, r.In(IIR) & 0xC0);
    }

    [Fact]
    public void OverrunIsFlaggedInLsrAndClearedByReadingIt()
    {
        var r = new Rig();
        r.Out(FCR, 0x01);
        r.Out(MCR, 0x10);
        for (int i = 0; i < 17; i++) r.Out(THR, 'a' + i);
        Assert.Equal(0x63, r.In(LSR)); // DR | OE | THRE | TEMT
        Assert.Equal(0x61, r.In(LSR)); // OE cleared by the read
        for (int i = 0; i < 16; i++) Assert.Equal('a' + i, r.In(RBR)); // the FIFO's bytes are kept, the 17th lost
        Assert.Equal(0x60, r.In(LSR));
    }

    [Fact]
    public void InterruptIdentificationFollowsPriorities()
    {
        var r = new Rig();
        r.Out(FCR, 0x01);               // trigger level 1
        r.Out(MCR, 0x10);               // loopback: MSR changes and overrun are under our control
        for (int i = 0; i < 17; i++) r.Out(THR, 'q');
        r.Out(MCR, 0x12);               // RTS -> CTS changes -> DCTS
        r.Out(IER, 0x0F);
        Assert.True(r.Level);
        Assert.Equal(0xC6, r.In(IIR));  // receiver line status first
        r.In(LSR);                      // clears OE
        Assert.Equal(0xC4, r.In(IIR));  // received data available
        while ((r.In(LSR) & 1) != 0) r.In(RBR);
        Assert.Equal(0xC2, r.In(IIR));  // THR empty, cleared by this read
        Assert.Equal(0xC0, r.In(IIR));  // modem status
        Assert.Equal(0x1B, r.In(MSR) & 0x1F); // CTS + DCTS, and DDSR/DDCD from entering loopback (the lines dropped)
        Assert.Equal(0xC1, r.In(IIR));  // nothing pending
        Assert.False(r.Level);
    }

    [Fact]
    public void BytesBelowTheTriggerLevelReportCharacterTimeout()
    {
        var r = new Rig();
        r.Out(FCR, 0x41);               // FIFO on, trigger 4
        r.Out(IER, 0x01);
        r.Backend.Inject("ab");
        Assert.Equal(0xCC, r.In(IIR));
        r.Backend.Inject("cd");
        Assert.Equal(0xC4, r.In(IIR));
        r.Out(FCR, 0x00);
        r.Backend.Inject("e");
        Assert.Equal(0x04, r.In(IIR));  // 16450 mode: any byte is "data available"
    }

    [Fact]
    public void ThreInterruptRisesOnEnableClearsOnIirReadAndReturnsAfterEachByte()
    {
        var r = new Rig();
        r.Out(IER, 0x02);
        Assert.Equal([true], r.Irq);
        Assert.Equal(0x02, r.In(IIR));
        Assert.Equal([true, false], r.Irq);
        Assert.Equal(0x01, r.In(IIR));
        r.Out(THR, 'x');
        Assert.Equal([true, false, true], r.Irq);
        r.Out(THR, 'y');                 // writing THR clears THRE, the byte leaves, THRE returns: a new edge
        Assert.Equal([true, false, true, false, true], r.Irq);
        r.Out(IER, 0x00);
        Assert.False(r.Level);
    }

    [Fact]
    public void IerMasksTheInterruptOutput()
    {
        var r = new Rig();
        r.Backend.Inject("z");
        Assert.False(r.Level);
        Assert.Equal(0x01, r.In(IIR));
        r.Out(IER, 0x01);
        Assert.True(r.Level);
        Assert.Equal(0x04, r.In(IIR));
        r.In(RBR);
        Assert.False(r.Level);
        Assert.Equal([true, false], r.Irq);
    }

    [Fact]
    public void LoopbackRoutesTransmitToReceiveAndMirrorsModemControl()
    {
        var r = new Rig();
        r.Out(MCR, 0x10);
        Assert.Equal(0x00, r.In(MSR) & 0xF0); // all outputs off
        r.Out(THR, 'L');
        Assert.Empty(r.Backend.Output);      // nothing on the wire
        Assert.Equal((byte)'L', r.In(RBR));

        r.Out(MCR, 0x10 | 0x02);             // RTS -> CTS
        Assert.Equal(0x10 | 0x01, r.In(MSR)); // CTS, DCTS
        r.Out(MCR, 0x10 | 0x01);             // DTR -> DSR (CTS drops)
        Assert.Equal(0x20 | 0x02 | 0x01, r.In(MSR)); // DSR, DDSR, DCTS
        r.Out(MCR, 0x10 | 0x04);             // OUT1 -> RI (rising: no TERI)
        Assert.Equal(0x40 | 0x02, r.In(MSR));
        r.Out(MCR, 0x10 | 0x08);             // OUT2 -> DCD; RI falls -> TERI
        Assert.Equal(0x80 | 0x08 | 0x04, r.In(MSR));
        Assert.Equal(0x80, r.In(MSR));       // deltas cleared by the read
    }

    [Fact]
    public void ModemStatusInterruptNeedsEdssi()
    {
        var r = new Rig();
        r.Out(MCR, 0x10 | 0x02);
        Assert.False(r.Level);
        r.Out(IER, 0x08);
        Assert.True(r.Level);
        Assert.Equal(0x00, r.In(IIR));
        r.In(MSR);
        Assert.False(r.Level);
    }

    [Fact]
    public void LoopbackDisconnectsHostInputUntilItEnds()
    {
        var r = new Rig();
        r.Out(MCR, 0x10);
        r.Backend.Inject("i");
        Assert.Equal(1, r.Backend.PendingInput);
        Assert.Equal(0, r.In(LSR) & 1);
        r.Out(MCR, 0x00);
        Assert.Equal(0, r.Backend.PendingInput);
        Assert.Equal((byte)'i', r.In(RBR));
    }

    [Fact]
    public void Out2GateIsOptional()
    {
        var r = new Rig();
        r.Uart.GateIrqWithOut2 = true;
        r.Out(IER, 0x02);
        Assert.False(r.Level);
        r.Out(MCR, 0x08);
        Assert.True(r.Level);
    }

    [Fact]
    public void WideAccessesReadConsecutiveRegistersAndOtherPortsReadOnes()
    {
        var r = new Rig();
        r.Out(SCR, 0x42);
        Assert.Equal(0x4260u, r.Uart.PortRead(Com1 + LSR + 1, 2) & 0xFF00 | r.Uart.PortRead(Com1 + LSR, 1));
        Assert.Equal(0xFF42u, r.Uart.PortRead(Com1 + SCR, 2)); // second byte is past the UART
        Assert.Equal(0xFFu, r.Uart.PortRead(0x3F0, 1));
        r.Uart.PortWrite(0x3F0, 1, 0x55);                      // ignored
        Assert.Equal(0x42, r.In(SCR));
    }

    [Fact]
    public void SaveAndRestoreKeepRegistersAndFifo()
    {
        var a = new Rig();
        a.Out(LCR, 0x80); a.Out(DLL, 3); a.Out(LCR, 0x1B);
        a.Out(FCR, 0x81); a.Out(SCR, 0x99); a.Out(IER, 0x05);
        a.Backend.Inject("xyz");
        var saved = StateCopy.Save(a.Uart);

        var b = new Rig();
        StateCopy.Load(b.Uart, saved);
        Assert.Equal(3, b.Uart.Divisor);
        Assert.Equal(0x1B, b.In(LCR));
        Assert.Equal(0x99, b.In(SCR));
        Assert.Equal(0x05, b.In(IER));
        Assert.True(b.Level);
        Assert.Equal("xyz", $"{(char)b.In(RBR)}{(char)b.In(RBR)}{(char)b.In(RBR)}");

        Assert.Throws<InvalidDataException>(() => StateCopy.Load(b.Uart, saved with { Version = 99 }));
        // 20 received bytes where the FIFO holds 16.
        var tooMany = (byte[])saved.Data.Clone();
        tooMany[11] = 20;
        Assert.Throws<InvalidDataException>(() => StateCopy.Load(b.Uart, saved with { Data = tooMany }));
    }

    [Fact]
    public void ResetClearsControlAndFifoButKeepsDivisorAndScratch()
    {
        var r = new Rig();
        r.Out(LCR, 0x80); r.Out(DLL, 1); r.Out(LCR, 0x03);
        r.Out(SCR, 7); r.Out(FCR, 0x01); r.Out(IER, 0x03);
        r.Backend.Inject("q");
        Assert.True(r.Level);
        r.Uart.Reset();
        Assert.False(r.Level);
        Assert.Equal(0, r.In(IER));
        Assert.Equal(0, r.In(LCR));
        Assert.Equal(0x01, r.In(IIR));
        Assert.Equal(0x60, r.In(LSR));
        Assert.Equal(7, r.In(SCR));
        Assert.Equal(1, r.Uart.Divisor);
    }

    [Fact]
    public void ComPortTable()
    {
        Assert.Equal(new Uart16550.ComPort("com1", 0x3F8, 4), Uart16550.ComPorts[0]);
        Assert.Equal(new Uart16550.ComPort("com2", 0x2F8, 3), Uart16550.ComPorts[1]);
        Assert.Equal(new Uart16550.ComPort("com3", 0x3E8, 4), Uart16550.ComPorts[2]);
        Assert.Equal(new Uart16550.ComPort("com4", 0x2E8, 3), Uart16550.ComPorts[3]);
    }
}

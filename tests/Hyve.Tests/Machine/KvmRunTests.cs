// SPDX-License-Identifier: BSD-2-Clause
using System.Text;
using Hyve.Kvm;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

public class KvmRunTests
{
    private sealed class Capture : IPortDevice
    {
        public readonly StringBuilder Text = new();
        public uint PortRead(ushort port, int size) => port == 0x3fd ? 0x60u : 0u;
        public void PortWrite(ushort port, int size, uint value) { if (port == 0x3f8) lock (Text) Text.Append((char)value); }
    }

    private static VmStop RunRom(byte[] rom, Capture cap, int cpus = 1)
    {
        using var mem = new GuestMemory(16 << 20);
        var vm = new Vm("t", new CpuTopology(cpus, 1, 1, cpus), mem, new ManualClock());
        vm.Ports.Register(0x3f8, 8, cap);
        string path = GuestRom.ToFile(rom);
        try
        {
            BootRom.Load(mem, path, null);
            return vm.Run(v => new KvmBackend(v));
        }
        finally { File.Delete(path); }
    }

    [SkippableKvmFact]
    public void RomPrintsAndHaltsWithInterruptsDisabled()
    {
        var cap = new Capture();
        var stop = RunRom(GuestRom.RealMode(a => { GuestRom.Print(a, "hello\n"); a.cli(); a.hlt(); }), cap);
        Assert.Equal("hello\n", cap.Text.ToString());
        Assert.Null(stop.Error);
        Assert.Equal(SuspendHow.Halt, stop.How);
        Assert.Equal(2, stop.ExitStatus);
    }
}

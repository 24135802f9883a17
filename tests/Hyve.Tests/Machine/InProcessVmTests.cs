// SPDX-License-Identifier: BSD-2-Clause
using System.Text;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

/// <summary>
/// A <see cref="Vm"/> run in process on each CPU engine with a boot ROM: printing and halting, the PIT's IRQ0 through the
/// 8259 waking HLT, and INIT/SIPI through the local APICs starting an application processor.
/// </summary>
public class InProcessVmTests
{
    private sealed class Capture : IPortDevice
    {
        public readonly StringBuilder Text = new();
        public uint PortRead(ushort port, int size) => port == 0x3fd ? 0x60u : 0u;
        public void PortWrite(ushort port, int size, uint value) { if (port == 0x3f8) lock (Text) Text.Append((char)value); }
    }

    private static (VmStop Stop, string Out, byte[] Low) RunRom(string accel, byte[] rom, int cpus = 1, Hyve.X86.CpuModel? model = null, bool x2apicAtStart = false)
    {
        using var clock = new TimerQueue();
        using var mem = new GuestMemory(16 << 20);
        var vm = new Vm("t", new CpuTopology(cpus, 1, 1, cpus), mem, clock) { CpuModel = model ?? Hyve.X86.CpuModel.Default, X2ApicAtStart = x2apicAtStart };
        var cap = new Capture();
        vm.Ports.Register(0x3f8, 8, cap);
        string path = GuestRom.ToFile(rom);
        try
        {
            BootRom.Load(mem, path, null);
            // As the machine does: the ROM's tail also appears below 1 MiB, so a real-mode far return or IRET to
            // F000:x (the CS an interrupt pushes while the ROM runs from its reset alias) lands in the ROM's code.
            BootRom.ShadowLegacyArea(mem);
            using var watchdog = new Timer(_ => vm.SetError("timed out"), null, 30_000, Timeout.Infinite);
            var stop = vm.Run(v => Backends.Create(accel, v));
            Assert.True(mem.TryGetSpan(0, 0x10000, MemProt.Read, out var low));
            lock (cap.Text) return (stop, cap.Text.ToString(), low.ToArray());
        }
        finally { File.Delete(path); }
    }

    private static void StoreBytes(Assembler a, uint address, byte[] bytes, bool flat)
    {
        for (int k = 0; k < bytes.Length; k++)
        {
            if (flat) a.mov(__byte_ptr[address + (uint)k], bytes[k]);
            else a.mov(__byte_ptr[(ushort)(address + (uint)k)], bytes[k]);
        }
    }

    // A power-off asked for after the control socket is up but before the vCPUs start (a SIGINT or hyvectl
    // --force-poweroff in that window; found as a hang in HardeningTests.SignalsEndTheVmCleanly under load) ends the
    // run that follows; the request does not outlive that run, so the next one (a reboot's) runs the guest.
    [Fact]
    public void A_power_off_requested_before_the_run_ends_it_and_not_the_next()
    {
        using var clock = new TimerQueue();
        using var mem = new GuestMemory(16 << 20);
        var vm = new Vm("t", new CpuTopology(1, 1, 1, 1), mem, clock);
        var cap = new Capture();
        vm.Ports.Register(0x3f8, 8, cap);
        string path = GuestRom.ToFile(GuestRom.RealMode(a => { GuestRom.Print(a, "ran\n"); a.cli(); a.hlt(); }));
        try
        {
            BootRom.Load(mem, path, null);
            BootRom.ShadowLegacyArea(mem);
            using var watchdog = new Timer(_ => vm.SetError("timed out"), null, 30_000, Timeout.Infinite);
            vm.Suspend(SuspendHow.PowerOff);
            var first = vm.Run(v => new Hyve.Soft.SoftBackend(v));
            Assert.Equal(SuspendHow.PowerOff, first.How);
            Assert.Null(first.Error);
            var second = vm.Run(v => new Hyve.Soft.SoftBackend(v));
            Assert.Equal(SuspendHow.Halt, second.How);
            lock (cap.Text) Assert.Contains("ran\n", cap.Text.ToString(), StringComparison.Ordinal);
        }
        finally { File.Delete(path); }
    }

    [Theory, KvmData, SoftData]
    public void RomPrintsAndHaltsWithInterruptsDisabled(string accel)
    {
        var r = RunRom(accel, GuestRom.RealMode(a => { GuestRom.Print(a, "hello\n"); a.cli(); a.hlt(); }));
        Assert.Null(r.Stop.Error);
        Assert.Equal("hello\n", r.Out);
        Assert.Equal(SuspendHow.Halt, r.Stop.How);
        Assert.Equal(2, r.Stop.ExitStatus);
    }

    [Theory, KvmData, SoftData]
    public void PitInterruptThroughThe8259WakesHltAndReachesTheIvtHandler(string accel)
    {
        // Handler at 0000:0600: mov al,20h; out 20h,al (EOI); mov byte [0700h],1; iret.
        byte[] handler = [0xb0, 0x20, 0xe6, 0x20, 0xc6, 0x06, 0x00, 0x07, 0x01, 0xcf];
        var r = RunRom(accel, GuestRom.RealMode(a =>
        {
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(sp, 0x7000);
            StoreBytes(a, 0x600, handler, false);
            a.mov(__word_ptr[0x20], 0x600); // IVT entry 8 (IRQ0 after the remap below)
            a.mov(__word_ptr[0x22], 0);
            // ICW1-4: edge, cascade, vector base 8, slave on IR2, 8086 mode; then unmask IRQ0 only.
            foreach (var (port, v) in new (byte, byte)[] { (0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe) })
            {
                a.mov(al, v);
                a.@out(port, al);
            }
            // PIT channel 0, mode 2, count 0x1000 (about 3.4 ms).
            a.mov(al, 0x34); a.@out(0x43, al);
            a.mov(al, 0x00); a.@out(0x40, al);
            a.mov(al, 0x10); a.@out(0x40, al);
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.sti();
            a.hlt();
            a.cmp(__byte_ptr[0x700], 1);
            a.jne(wait);
            a.cli();
            GuestRom.Print(a, "tick\n");
            a.hlt();
        }));
        Assert.Null(r.Stop.Error);
        Assert.Equal("tick\n", r.Out);
        Assert.Equal(SuspendHow.Halt, r.Stop.How);
    }

    [Theory, KvmData, SoftData]
    public void X2ApicInitAndStartupIpisFromRealModeStartAnApplicationProcessor(string accel)
    {
        // The same start-up as below through the x2APIC MSRs, which real mode reaches (and kvm-pvm runs) without
        // entering protected mode. The default model, as bhyve's default, does not report x2APIC: the max model does. The AP starts at 0800:0000 (SIPI vector 8): mov byte [0900h],5ah; cli; hlt.
        byte[] ap = [0xc6, 0x06, 0x00, 0x09, 0x5a, 0xfa, 0xf4];
        var r = RunRom(accel, GuestRom.RealMode(a =>
        {
            a.xor(ax, ax);
            a.mov(ds, ax);
            StoreBytes(a, 0x8000, ap, false);
            a.mov(ecx, 0x1b);                 // IA32_APIC_BASE: enable, then x2APIC mode (EXTD)
            a.rdmsr();
            a.or(eax, 0xc00);
            a.wrmsr();
            a.xor(edx, edx);
            a.mov(ecx, 0x80f);                // SVR: software-enable
            a.mov(eax, 0x1ff);
            a.wrmsr();
            a.mov(ecx, 0x830);                // ICR: INIT, then start-up vector 8, to all but self
            a.mov(eax, 0x000c4500);
            a.wrmsr();
            a.mov(eax, 0x000c4608);
            a.wrmsr();
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.pause();
            a.cmp(__byte_ptr[0x900], 0x5a);
            a.jne(spin);
            GuestRom.Print(a, "A");
            a.cli();
            a.hlt();
        }), cpus: 2, model: Hyve.X86.CpuModel.Named("max", Hyve.X86.CpuVendor.Intel));
        Assert.Null(r.Stop.Error);
        Assert.True(r.Out == "A", $"{r.Stop} out={r.Out} flag={r.Low[0x900]:x} ap0={r.Low[0x8000]:x}");
        Assert.Equal(SuspendHow.Halt, r.Stop.How);
    }

    // bhyve's -x: every local APIC comes out of power-on in x2APIC mode. IA32_APIC_BASE reads EN and EXTD (and BSP on
    // vCPU 0), and the x2APIC MSRs answer at once: the AP is started through the x2APIC ICR without any mode switch,
    // and each vCPU reads its x2APIC ID from MSR 0x802 (SDM Vol. 3 11.12).
    [Theory, KvmData, SoftData]
    public void With_minus_x_every_local_apic_starts_in_x2apic_mode(string accel)
    {
        // The AP at 0800:0000: mov ecx,1bh; rdmsr; mov [0904h],eax; mov ecx,802h; rdmsr; mov [0908h],eax;
        // mov byte [0900h],5ah; cli; hlt.
        byte[] ap =
        [
            0x66, 0xb9, 0x1b, 0, 0, 0, 0x0f, 0x32, 0x66, 0xa3, 0x04, 0x09,
            0x66, 0xb9, 0x02, 0x08, 0, 0, 0x0f, 0x32, 0x66, 0xa3, 0x08, 0x09,
            0xc6, 0x06, 0x00, 0x09, 0x5a, 0xfa, 0xf4,
        ];
        var r = RunRom(accel, GuestRom.RealMode(a =>
        {
            a.xor(ax, ax);
            a.mov(ds, ax);
            StoreBytes(a, 0x8000, ap, false);
            a.mov(ecx, 0x1b);
            a.rdmsr();
            a.mov(__dword_ptr[0x910], eax);
            a.xor(edx, edx);
            a.mov(ecx, 0x80f);                // SVR: software-enable, straight through the x2APIC MSR
            a.mov(eax, 0x1ff);
            a.wrmsr();
            a.mov(ecx, 0x830);                // ICR: INIT, then start-up vector 8, to all but self
            a.mov(eax, 0x000c4500);
            a.wrmsr();
            a.mov(eax, 0x000c4608);
            a.wrmsr();
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.pause();
            a.cmp(__byte_ptr[0x900], 0x5a);
            a.jne(spin);
            GuestRom.Print(a, "A");
            a.cli();
            a.hlt();
        }), cpus: 2, x2apicAtStart: true, model: Hyve.X86.CpuModel.Parse(null, null, "+x2apic"));
        Assert.Null(r.Stop.Error);
        Assert.True(r.Out == "A", $"{r.Stop} out={r.Out} flag={r.Low[0x900]:x}");
        uint bspBase = BitConverter.ToUInt32(r.Low, 0x910), apBase = BitConverter.ToUInt32(r.Low, 0x904);
        Assert.Equal(0xfee00d00u, bspBase); // base, EN (bit 11), EXTD (bit 10), BSP (bit 8)
        Assert.Equal(0xfee00c00u, apBase);
        Assert.Equal(1u, BitConverter.ToUInt32(r.Low, 0x908)); // the AP's x2APIC ID
    }

    [Theory, KvmData, SoftData]
    public void InitAndStartupIpisStartAnApplicationProcessor(string accel)
    {
        // The AP starts at 0800:0000 (SIPI vector 8): mov byte [0900h],5ah; cli; hlt.
        byte[] ap = [0xc6, 0x06, 0x00, 0x09, 0x5a, 0xfa, 0xf4];
        var r = RunRom(accel, GuestRom.ProtectedMode32(a =>
        {
            StoreBytes(a, 0x8000, ap, true);
            a.mov(__dword_ptr[0xfee000f0], 0x1ff);      // SVR: software-enable the BSP's APIC
            a.mov(__dword_ptr[0xfee00310], 0);
            a.mov(__dword_ptr[0xfee00300], 0x000c4500); // INIT to all but self
            a.mov(__dword_ptr[0xfee00300], 0x000c4608); // start-up, vector 8
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.pause();
            a.cmp(__byte_ptr[0x900], 0x5a);
            a.jne(spin);
            a.mov(dx, 0x3f8);
            a.mov(al, (byte)'A');
            a.@out(dx, al);
            a.cli();
            a.hlt();
        }), cpus: 2);
        Assert.Null(r.Stop.Error);
        Assert.True(r.Out == "A", $"{r.Stop} out={r.Out} flag={r.Low[0x900]:x} ap0={r.Low[0x8000]:x}");
        Assert.Equal(0x5a, r.Low[0x900]);
        Assert.Equal(SuspendHow.Halt, r.Stop.How);
    }
}

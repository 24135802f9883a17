// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Devices;
using Hyve.Tests.Io2;
using Hyve.Vnc;
using Xunit;

namespace Hyve.Tests.Kbc;

/// <summary>Host key presses (the VNC server's) through the 8042: scan code sets, translation, keymaps.</summary>
public class I8042KeyInputTests
{
    private readonly I8042 _kbc = new(new RecordingIrqLines(), () => { });

    private List<byte> Drain()
    {
        var bytes = new List<byte>();
        while ((_kbc.PortRead(I8042.CommandPort, 1) & 0x01) != 0) bytes.Add((byte)_kbc.PortRead(I8042.DataPort, 1));
        return bytes;
    }

    private void Press(KeyMap map, uint keysym)
    {
        Assert.True(map.TryGet(keysym, out var k), $"keysym 0x{keysym:x} unmapped");
        _kbc.KeyEvent(k.Code, k.Extended, true);
        _kbc.KeyEvent(k.Code, k.Extended, false);
    }

    [Fact]
    public void WithTranslationOnTheGuestReadsSet1MakeAndBreakCodes()
    {
        var us = KeyMap.ForLayout("us");
        Press(us, 'v');
        Press(us, 0xff0d);  // Return
        Press(us, 0xff52);  // Up: E0-prefixed
        Assert.Equal([0x2f, 0xaf, 0x1c, 0x9c, 0xe0, 0x48, 0xe0, 0xc8], Drain());
    }

    [Fact]
    public void WithTranslationOffTheKeyboardSpeaksSet2()
    {
        _kbc.PortWrite(I8042.CommandPort, 1, 0x60);
        _kbc.PortWrite(I8042.DataPort, 1, 0x01); // command byte: IRQ 1 on, translation off
        var us = KeyMap.ForLayout("us");
        Press(us, 'v');
        Press(us, 0xff52);
        Assert.Equal([0x2a, 0xf0, 0x2a, 0xe0, 0x75, 0xe0, 0xf0, 0x75], Drain());
        // The guest asks which set: 2; selects set 1; keys follow in set 1.
        _kbc.PortWrite(I8042.DataPort, 1, 0xf0);
        _kbc.PortWrite(I8042.DataPort, 1, 0x00);
        Assert.Equal([0xfa, 0xfa, 0x02], Drain());
        _kbc.PortWrite(I8042.DataPort, 1, 0xf0);
        _kbc.PortWrite(I8042.DataPort, 1, 0x01);
        Drain();
        Press(us, 'v');
        Assert.Equal([0x2f, 0xaf], Drain());
    }

    [Fact]
    public void ADisabledKeyboardSendsNothing()
    {
        _kbc.PortWrite(I8042.DataPort, 1, 0xf5);
        Assert.Equal([0xfa], Drain());
        _kbc.KeyEvent(0x1e, false, true);
        Assert.Empty(Drain());
        _kbc.PortWrite(I8042.DataPort, 1, 0xf4);
        Drain();
        _kbc.KeyEvent(0x1e, false, true);
        Assert.Equal([0x1e], Drain());
    }

    [Fact]
    public void TheGermanLayoutSendsTheKeysThatMakeTheSymbolsThere()
    {
        var de = KeyMap.ForLayout("de");
        Press(de, 'z');    // right of T on a German keyboard
        Press(de, 'y');    // left of X
        Press(de, 0xf6);   // o-umlaut: the US semicolon key
        Assert.Equal([0x15, 0x95, 0x2c, 0xac, 0x27, 0xa7], Drain());
        Assert.Throws<HostConfigException>(() => KeyMap.ForLayout("klingon"));
    }
}
